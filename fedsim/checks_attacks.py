"""The properties every update forger must have, for your own forger as for the built-ins.

:func:`check_forger` (re-exported by :mod:`fedsim.checks`) runs them on one forger (a name, as a
scenario names it, or an instance) over a fixed, seeded set of cases shaped as the engine calls
``forge`` (:func:`fedsim.messages.forge_messages`): ``k = 1`` sender forging alone
(``peers.attack.collude: false``; ``ctx.f`` still counts every Byzantine peer) or ``k = 3``
colluding, ``honest`` the round's honest vectors (omniscient) or the senders' own (not), a
per-receiver forger with and without the receiver's honest neighbours, a forger that looks back
with and without ``ctx.previous``. ``tests/test_attacks_registry.py`` and
``tests/test_unread_fields.py`` check every registered forger with the same functions:

* :func:`check_messages` — ``forge`` returns ``k`` finite rows ``[k, P]`` of ``own``'s dtype,
  all of which receivers accept (:func:`fedsim.messages.forged_rows`, the engine's own test),
  unless the class declares ``malformed = True`` (crash, nan, wrong_shape: their messages are
  dropped on purpose);
* :func:`check_deterministic` — two calls with generators seeded alike return the same bits
  (randomness only from ``ctx.generator``, never torch's global generator);
* :func:`check_leaves_inputs` — ``forge`` modifies none of the tensors it is handed (``honest``,
  ``own``, ``ctx.previous``, ``ctx.receiver_own``, ``ctx.receiver_neighbors``);
* :func:`forger_reads_honest` / :func:`forger_reads_f` — whether the honest vectors / the run's
  ``f`` (``ctx.f_received`` or ``check``'s second argument) change what it does; a forger that
  reads one must declare it (``reads_honest``, ``reads_f``), since validation refuses
  ``peers.attack.omniscient`` / ``strategy.f`` on that declaration. Declaring a read it does not
  make is allowed here (it only costs a refusal; a plugin that does not say is assumed to read
  the honest vectors); the built-ins' tests demand the declarations match exactly;
* the class has a docstring (``fedsim list`` shows it) and ``check(10, 2)`` accepts a plain setting.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

import attacks
from fedlib.registry import NO_DOC, class_doc
from fedsim.messages import forged_rows

C, D = 3, 4  # the head the cases use: 3 classes, 4 features, with bias
P = C * D + C
N, F_RECEIVED, F = 9, 2, 3  # a victim aggregates N vectors, F_RECEIVED Byzantine; F Byzantine peers
HONEST_ROWS = 7


@dataclass(frozen=True)
class Case:
    """One call of ``forge``: its tensors and the context's other fields (a fresh context, with a
    generator seeded from ``seed``, is built for every call: :meth:`context`)."""

    honest: Tensor
    own: Tensor
    seed: int
    ctx: dict[str, object] = field(default_factory=dict)

    def context(self) -> attacks.AttackContext:
        """The context of this case, with a fresh generator seeded from ``seed``."""
        return attacks.AttackContext(
            n=N, f=F, f_received=F_RECEIVED, round=2, layer_shape=(C, D), num_classes=C,
            generator=torch.Generator().manual_seed(self.seed), **self.ctx,  # type: ignore[arg-type]
        )  # fmt: skip

    def describe(self) -> str:
        """The case in a few words, for a failure message."""
        extra = "".join(f", {k}" for k, v in self.ctx.items() if v is not None)
        return f"k={self.own.shape[0]}, honest {tuple(self.honest.shape)}{extra}, seed {self.seed}"

    def tensors(self) -> dict[str, Tensor]:
        """Every tensor ``forge`` is handed, by name."""
        named = {"honest": self.honest, "own": self.own}
        return named | {f"ctx.{k}": v for k, v in self.ctx.items() if isinstance(v, Tensor)}


def cases(forger: attacks.UpdateForger, seeds: Iterable[int]) -> list[Case]:
    """The cases for ``forger`` (module docstring): for each seed, k in (1, 3), honest the round's
    vectors or the senders' own; ``ctx.receiver_own`` (and neighbours, or none) for a per-receiver
    forger; ``ctx.previous`` (and None) for one that looks back."""
    out = []
    for seed in seeds:
        g = torch.Generator().manual_seed(seed)
        pool = torch.randn(HONEST_ROWS, P, generator=g) + 0.5
        for k in (1, 3):
            own = torch.randn(k, P, generator=g)
            for honest in (pool, own.clone()):
                extras: list[dict[str, object]] = [{}]
                if forger.per_receiver:
                    receiver = torch.randn(P, generator=g)
                    extras = [{"receiver_own": receiver, "receiver_neighbors": pool[:4]}, {"receiver_own": receiver}]
                if forger.lookback > 0:
                    extras = [e | {"previous": p} for e in extras for p in (None, torch.randn(k, P, generator=g))]
                out += [Case(honest, own, seed, e) for e in extras]
    return out


def _name(forger: attacks.UpdateForger) -> str:
    return getattr(forger, "name", "") or type(forger).__name__


def _forge(forger: attacks.UpdateForger, case: Case) -> Tensor | None:
    try:
        return forger.forge(case.honest, case.own, case.context())
    except Exception as e:
        raise AssertionError(f"{_name(forger)}: {case.describe()}: forge raised {e!r}") from e


def _shown(out: object) -> str:
    if isinstance(out, Tensor):
        finite = "finite" if bool(torch.isfinite(out).all()) else "with NaN/Inf"
        return f"{tuple(out.shape)} {out.dtype} {finite}"
    return repr(out) if out is None else type(out).__name__


def check_messages(forger: attacks.UpdateForger, case: Case) -> bool:
    """The first property (module docstring) on one case; ``AssertionError`` naming the forger and
    the case when it fails. False for a forger declaring ``malformed`` (nothing checked)."""
    if forger.malformed:
        return False
    out = _forge(forger, case)
    k = case.own.shape[0]
    rows, valid = forged_rows(out, k, P)
    assert rows is not None and bool(valid.all()) and rows.dtype == case.own.dtype, (
        f"{_name(forger)}: {case.describe()}: forge returned {_shown(out)}, not {k} finite rows "
        f"{(k, P)} {case.own.dtype} (a forger whose messages are dropped on purpose says malformed = True)"
    )
    return True


def same_bits(a: object, b: object) -> bool:
    """Whether two outputs of ``forge`` are the same: both None, or tensors of one shape and dtype
    with the same bytes (NaN included)."""
    if not isinstance(a, Tensor) or not isinstance(b, Tensor):
        return a is None and b is None
    return a.shape == b.shape and a.dtype == b.dtype and a.cpu().numpy().tobytes() == b.cpu().numpy().tobytes()


def check_deterministic(forger: attacks.UpdateForger, case: Case) -> bool:
    """The second property (module docstring) on one case; ``AssertionError`` when two calls differ."""
    first, second = _forge(forger, case), _forge(forger, case)
    assert same_bits(first, second), (
        f"{_name(forger)}: {case.describe()}: two calls with the same seed differ ({_shown(first)} vs "
        f"{_shown(second)}): draw only from ctx.generator"
    )
    return True


def check_leaves_inputs(forger: attacks.UpdateForger, case: Case) -> bool:
    """The third property (module docstring) on one case; ``AssertionError`` naming the tensor that
    ``forge`` modified."""
    before = {k: v.clone() for k, v in case.tensors().items()}
    _forge(forger, case)
    for k, v in case.tensors().items():
        assert same_bits(v, before[k]), f"{_name(forger)}: {case.describe()}: forge modified {k} (clone before writing)"
    return True


def depends_on_f(check: Callable[[int, int], None], ns: Iterable[int], fs_for: Callable[[int], Iterable[int]]) -> bool:
    """Whether ``check(n, f)`` accepts some ``f`` and refuses (``ValueError``) another for one of
    the ``ns`` (``fs_for(n)``: the ``f`` tried for ``n``)."""
    for n in ns:
        outcomes = set()
        for f in fs_for(n):
            try:
                check(n, f)
                outcomes.add("ok")
            except ValueError:
                outcomes.add("refused")
        if len(outcomes) > 1:
            return True
    return False


def _differ(outs: Sequence[Tensor | None]) -> bool:
    """Whether outputs of ``forge`` on inputs that differ in one thing differ (None vs a tensor, or
    two same-shaped tensors not all close)."""
    first = outs[0]
    return any(
        (o is None) != (first is None)
        or (o is not None and first is not None and o.shape == first.shape
            and not torch.allclose(o, first, equal_nan=True))
        for o in outs[1:]
    )  # fmt: skip


def forger_reads_f(forger: attacks.UpdateForger) -> bool:
    """Whether the run's ``f`` (``ctx.f_received``, ``check``'s second argument) changes the
    forger's ``check`` or its messages (f_received 0, 1, 2 on one population)."""
    if depends_on_f(forger.check, range(2, 13), range):
        return True
    g = torch.Generator().manual_seed(0)
    honest, own = torch.randn(7, P, generator=g), torch.randn(2, P, generator=g)
    outs = []
    for fr in (0, 1, 2):
        ctx = attacks.AttackContext(
            n=9, f=2, f_received=fr, layer_shape=(C, D), num_classes=C, generator=torch.Generator().manual_seed(1),
            receiver_own=honest[0], receiver_neighbors=honest[1:4],
        )  # fmt: skip
        outs.append(forger.forge(honest, own, ctx))
    return _differ(outs)


def forger_reads_honest(forger: attacks.UpdateForger) -> bool:
    """Whether the honest vectors handed to ``forge`` change the forged messages (two honest
    populations, the same own vectors and seed; ``receiver_neighbors`` None, so a per-receiver
    forger falls back to ``honest``, as it does at the federated server)."""
    g = torch.Generator().manual_seed(0)
    own, receiver = torch.randn(2, P, generator=g), torch.randn(P, generator=g)
    outs = []
    for seed in (1, 2):
        honest = torch.randn(7, P, generator=torch.Generator().manual_seed(seed)) * seed
        ctx = attacks.AttackContext(
            n=9, f=2, f_received=2, layer_shape=(C, D), num_classes=C, generator=torch.Generator().manual_seed(3),
            receiver_own=receiver, previous=own + 1,
        )  # fmt: skip
        outs.append(forger.forge(honest, own, ctx))
    a, b = outs
    return _differ(outs) or (a is not None and b is not None and a.shape != b.shape)


def check_declared_reads(forger: attacks.UpdateForger) -> None:
    """The fourth property (module docstring); ``AssertionError`` naming the undeclared read."""
    name = _name(forger)
    assert forger.reads_honest or not forger_reads_honest(forger), (
        f"{name}: its messages change with the honest vectors but it says reads_honest = False"
    )
    assert forger.reads_f or not forger_reads_f(forger), (
        f"{name}: ctx.f_received (or check's f) changes what it does but it does not say reads_f = True"
    )


def check_forger(
    attack: attacks.UpdateForger | str,
    *,
    seeds: int = 5,
    plugins: Sequence[str] = (),
) -> int:
    """Check ``attack`` (an update forger, or a registered forger's name built with its defaults)
    against the properties of the module docstring over the cases of ``seeds`` seeds;
    ``AssertionError`` naming the property and the case at the first failure (``ValueError`` for
    a data poisoner). ``plugins``: the files or modules that register it (as ``fedsim.run``'s).
    Torch's global random state is left as it was. Returns the number of property checks made."""
    if plugins:
        from fedsim import plugins as plugin_mod

        plugin_mod.load(plugin_mod.grant(plugins))
    forger = attacks.build(attack) if isinstance(attack, str) else attack
    if not isinstance(forger, attacks.UpdateForger):
        raise ValueError(f"check_forger: {_name(forger)} is not an update forger (a data poisoner?)")
    cls = type(forger)
    assert class_doc(cls) != NO_DOC, f"{cls.__name__}: no docstring (fedsim list shows it)"
    try:
        forger.check(N + 1, F_RECEIVED)
    except ValueError as e:
        raise AssertionError(f"{_name(forger)}: check(n={N + 1}, f={F_RECEIVED}) refuses a plain setting: {e}") from e
    checked = 0
    with torch.random.fork_rng(devices=[]):
        for case in cases(forger, range(seeds)):
            checked += check_leaves_inputs(forger, case)  # first: a forger that writes its inputs differs twice
            checked += check_messages(forger, case) + check_deterministic(forger, case)
        check_declared_reads(forger)
    return checked + 1
