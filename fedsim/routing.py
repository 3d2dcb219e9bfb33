"""What travels between peer groups in a decentralized round, and how a group reads it.

Each group's :meth:`fedsim.peers.PeerGroup.train` returns its peers' heads as one message array
``[p, P]``; every group's :meth:`~fedsim.peers.PeerGroup.aggregate` receives all groups' arrays.
:class:`Rows` reads the rows a group's receivers hear straight out of those arrays, one chunk of
receivers at a time, instead of concatenating every group's messages into one ``[N, P]`` copy per
group per round (at 100,000 peers that copy is 2.3 GB in each group).

``engine.message_dtype`` (:data:`MESSAGE_DTYPES`): the precision of the messages. ``float32``
(default) sends the heads as they are. ``float16`` / ``bfloat16`` round them for the wire and for
the object store (half the bytes); receivers compute in float32 on the rounded values, and every
peer keeps its own head in ``engine.head_dtype`` (float32 by default; :mod:`fedsim.peers`; the
same three names). A departure from the papers' full-precision exchange, off by default; its
effect on accuracy is measured in docs/performance.md.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

import strategies

MESSAGE_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


def _checked(dtype: str) -> str:
    """``dtype`` if it is one of :data:`MESSAGE_DTYPES`, else the one-line error."""
    if dtype not in MESSAGE_DTYPES:
        raise ValueError(f"engine.message_dtype: got {dtype!r}; allowed: {', '.join(MESSAGE_DTYPES)}")
    return dtype


def _as_message(out: Tensor, dtype: str) -> np.ndarray:
    """A half-precision tensor as the message array (bfloat16 as its raw 16-bit patterns)."""
    return (out.view(torch.uint16) if dtype == "bfloat16" else out).numpy()


def encode_head(w: Tensor, b: Tensor | None, dtype: str) -> np.ndarray:
    """The message array a group sends for its heads ``w [p, C, d]``, ``b [p, C]`` or None: their
    flattened layout ``fedlib.heads.flatten(w, b)`` ``[p, P]``, float32 as it is, float16 as NumPy
    float16, bfloat16 as its raw 16-bit patterns (NumPy has no bfloat16; ``uint16``). Always a new
    array: in half precision converted straight into the message (no float32 ``[p, P]``
    concatenation first; the same values), in float32 the concatenation (a copy even without a bias).
    Heads stored in half precision (``engine.head_dtype``) are converted the same way (to float32
    exactly)."""
    flat_w = w.reshape(w.shape[0], -1)  # (heads on engine.device: the message is copied to the CPU)
    if _checked(dtype) == "float32" and w.dtype == torch.float32:
        return (flat_w.to("cpu", copy=True) if b is None else torch.cat([flat_w, b], dim=1).cpu()).numpy()
    cd = flat_w.shape[1]
    out = torch.empty(w.shape[0], cd + (0 if b is None else b.shape[1]), dtype=MESSAGE_DTYPES[dtype])
    out[:, :cd].copy_(flat_w)
    if b is not None:
        out[:, cd:].copy_(b)
    return _as_message(out, dtype)


def head_views(w: Tensor, b: Tensor | None, dtype: str) -> np.ndarray | tuple[np.ndarray, np.ndarray] | None:
    """The message of heads ``w [p, C, d]``, ``b [p, C]`` or None as views of them, no copy: where
    they are stored on the CPU in the message's dtype (``engine.head_dtype`` = ``engine.message_dtype``),
    ``w``'s rows ``[p, C*d]`` alone (no bias: :func:`encode_head`'s array) or with ``b``'s rows as a
    pair (:class:`HeadParts` reads it as that array); None where a conversion is needed. Only for a
    sender whose message is copied out when sent (a Ray actor's return value, written into the
    object store at once: no ``[p, P]`` copy in its heap first, issue 19); in-process the aggregation
    writes into ``w`` while the messages are read (:meth:`fedsim.peers.PeerGroup._message`)."""
    if w.device.type != "cpu" or w.dtype != MESSAGE_DTYPES[_checked(dtype)] or (b is not None and b.dtype != w.dtype):
        return None
    flat_w = _as_message(w.reshape(w.shape[0], -1), dtype)
    return flat_w if b is None else (flat_w, _as_message(b, dtype))


class HeadParts:
    """A message sent as :func:`head_views`' pair ``(w rows [p, C*d], b rows [p, C])``, read as
    :func:`encode_head`'s ``[p, P]`` array without building it (the few tensor operations
    :class:`Rows` and the records use: rows gathered, then joined; the same values)."""

    def __init__(self, w: Tensor, b: Tensor) -> None:
        self.w, self.b = w, b
        self.shape = (w.shape[0], w.shape[1] + b.shape[1])
        self.dtype = w.dtype

    def index_select(self, dim: int, idx: Tensor) -> Tensor:
        """Rows ``idx`` (``dim`` 0) as one tensor in the message's dtype."""
        assert dim == 0
        return torch.cat([self.w.index_select(0, idx), self.b.index_select(0, idx)], dim=1)

    def __getitem__(self, i: int) -> Tensor:
        return torch.cat([self.w[i], self.b[i]])

    def float(self) -> Tensor:
        """The whole ``[p, P]`` as float32."""
        return torch.cat([self.w, self.b], dim=1).float()

    def finite(self) -> Tensor:
        """Bool ``[p]``: rows with only finite values (:func:`strategies.finite_rows` of each part)."""
        return strategies.finite_rows(self.w) & strategies.finite_rows(self.b)


def decode(message: np.ndarray | tuple[np.ndarray, np.ndarray]) -> Tensor | HeadParts:
    """A message array as a tensor, without copying (``uint16`` is bfloat16, see :func:`encode_head`);
    :func:`head_views`' pair as a :class:`HeadParts`."""
    if isinstance(message, tuple):
        return HeadParts(decode(message[0]), decode(message[1]))
    with warnings.catch_warnings():  # a Ray object-store array is read-only; it is only ever read here
        warnings.simplefilter("ignore", UserWarning)
        t = torch.from_numpy(np.asarray(message))
    return t.view(torch.bfloat16) if t.dtype == torch.uint16 else t


class Rows:
    """Every group's messages, read as one ``[N, P]`` float32 array without building it: indexing
    (an int, a slice, or an integer tensor of any shape) gathers just those rows, converted to
    float32. ``parts`` are the groups' message tensors (or :class:`HeadParts`) in peer order."""

    def __init__(self, parts: Sequence[Tensor | HeadParts]) -> None:
        if not parts:
            raise ValueError("Rows: no message arrays")
        self.parts = list(parts)
        sizes = [p.shape[0] for p in self.parts]
        self.starts = torch.tensor(np.concatenate([[0], np.cumsum(sizes)]), dtype=torch.long)
        self.shape = (int(self.starts[-1]), self.parts[0].shape[1])
        dtypes = {p.dtype for p in self.parts}  # (every group sends engine.message_dtype)
        self.dtype = dtypes.pop() if len(dtypes) == 1 else torch.float32

    def __len__(self) -> int:
        return self.shape[0]

    def full(self) -> Tensor:
        """The ``[N, P]`` float32 concatenation (what a forger needs: every honest vector at once)."""
        return torch.cat([p.float() for p in self.parts])

    def finite(self) -> Tensor:
        """Bool ``[N]``: rows with only finite values (:func:`strategies.finite_rows`, one part at a time)."""
        return torch.cat([p.finite() if isinstance(p, HeadParts) else strategies.finite_rows(p) for p in self.parts])

    def __getitem__(self, idx: int | slice | Tensor | np.ndarray) -> Tensor:
        if isinstance(idx, int | np.integer):
            k = int(torch.searchsorted(self.starts, int(idx), right=True)) - 1
            return self.parts[k][int(idx) - int(self.starts[k])].float()
        return self.take(idx)

    def take(
        self, idx: slice | Tensor | np.ndarray, device: torch.device | None = None, float32: bool = True
    ) -> Tensor:
        """The rows ``idx`` as float32, on ``device`` (default: the CPU, where the messages are): gathered
        on the CPU in the messages' own dtype, moved once (half the bytes with half-precision
        messages), converted to float32 there. With the CPU (or None) the same tensor as ``self[idx]``.
        ``float32=False``: left in the messages' dtype (:attr:`dtype`; for a rule that widens them
        exactly itself, ``strategies.Strategy.widens_received``: no float32 copy)."""
        if isinstance(idx, slice):
            idx = torch.arange(*idx.indices(self.shape[0]))
        idx = torch.as_tensor(idx, dtype=torch.long)
        flat = idx.reshape(-1)  # row gathers by index_select: ~6x faster than part[idx] (measured)
        if len(self.parts) == 1:
            out = self.parts[0].index_select(0, flat).to(device)
            return (out.float() if float32 else out).reshape(*idx.shape, self.shape[1])
        which = torch.searchsorted(self.starts, flat, right=True) - 1
        # gathered in the messages' own dtype, converted once (index_copy_, not out[sel] = ...: one pass less)
        out = torch.empty(flat.shape[0], self.shape[1], dtype=self.dtype)
        for k, part in enumerate(self.parts):
            sel = torch.nonzero(which == k).flatten()
            if len(sel):
                out.index_copy_(0, sel, part.index_select(0, flat[sel] - self.starts[k]).to(self.dtype))
        out = out.to(device)
        return (out.float() if float32 else out).reshape(*idx.shape, self.shape[1])
