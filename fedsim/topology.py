"""Who hears whom. A topology gives, for each round, every peer's in-neighbours as a CSR pair
``(indptr, indices)``: peer i hears ``indices[indptr[i]:indptr[i+1]]``.

Static graphs are undirected (each edge carries messages both ways): complete, ring, k-regular,
Erdős–Rényi, Watts–Strogatz small world; ``push_gossip`` draws a fresh directed graph each round
(every peer pushes to ``fanout`` random others); ``star`` is federated mode (handled by the
runner, every client talks to the server).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from fedsim import rng as crng

if TYPE_CHECKING:  # networkx is imported where a graph is drawn (listing the kinds needs none)
    import networkx as nx

KINDS = {
    "complete": "every peer hears every other",
    "ring": "peer i hears i-1 and i+1",
    "k_regular": "random k-regular graph (topology.degree)",
    "erdos_renyi": "G(n, p), redrawn until connected (topology.p)",
    "watts_strogatz": "small world: ring lattice of topology.degree, rewired with prob. topology.p",
    "push_gossip": "each round every peer pushes to topology.fanout random peers",
    "star": "federated mode: clients talk to one server",
}


def _csr(neigh: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    indptr = np.zeros(len(neigh) + 1, dtype=np.int64)
    indptr[1:] = np.cumsum([len(a) for a in neigh])
    indices = np.concatenate(neigh).astype(np.int64) if neigh else np.empty(0, np.int64)
    return indptr, indices


def _from_graph(g: nx.Graph, n: int) -> tuple[np.ndarray, np.ndarray]:
    return _csr([np.asarray(sorted(g.neighbors(i)), dtype=np.int64) for i in range(n)])


@dataclass
class Topology:
    kind: str
    n: int
    seed: int
    degree: int = 4
    p: float = 0.2
    fanout: int = 5
    _static: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)

    def build(self) -> Topology:
        """Construct the static graph (no work in ``__init__``); raises ``ValueError`` naming the
        ``topology.*`` field when the parameters cannot give a connected graph."""
        n = self.n
        if self.kind == "complete":
            self._static = _csr([np.delete(np.arange(n), i) for i in range(n)])
        elif self.kind == "ring":
            if n < 3:
                raise ValueError("topology.kind=ring needs peers.count >= 3")
            self._static = _csr([np.unique([(i - 1) % n, (i + 1) % n]) for i in range(n)])
        elif self.kind == "k_regular":
            import networkx as nx

            if not 0 < self.degree < n or (n * self.degree) % 2:
                raise ValueError(
                    f"topology.degree={self.degree}: must be < peers.count ({n}) and degree·peers.count even "
                    "(a k-regular graph has degree·peers/2 edges)"
                )
            self._static = _from_graph(self._connected(lambda r: nx.random_regular_graph(self.degree, n, seed=r)), n)
        elif self.kind == "erdos_renyi":
            import networkx as nx

            self._static = _from_graph(self._connected(lambda r: nx.gnp_random_graph(n, self.p, seed=r)), n)
        elif self.kind == "watts_strogatz":
            import networkx as nx

            if not 2 <= self.degree < n:
                raise ValueError(f"topology.degree={self.degree}: need 2 <= degree, and it must be < peers.count ({n})")
            self._static = _from_graph(
                self._connected(lambda r: nx.watts_strogatz_graph(n, self.degree, self.p, seed=r)), n
            )
        elif self.kind == "push_gossip":
            if not 0 < self.fanout < n:
                raise ValueError(f"topology.fanout={self.fanout}: must be < peers.count ({n})")
        elif self.kind == "star":
            pass
        else:
            raise ValueError(f"unknown topology {self.kind!r}; available: {', '.join(KINDS)}")
        return self

    def _connected(self, make, tries: int = 100) -> nx.Graph:
        import networkx as nx

        for t in range(tries):
            g = make(crng.derive_seed(self.seed, "topology", t) % (2**32))
            if nx.is_connected(g):
                return g
        raise ValueError(
            f"topology.{self.kind}: no connected graph in {tries} draws; raise topology.p or topology.degree"
        )

    @property
    def static(self) -> bool:
        return self.kind != "push_gossip"

    def in_neighbors(self, round_: int) -> tuple[np.ndarray, np.ndarray]:
        """CSR in-neighbours for ``round_``."""
        if self._static is not None:
            return self._static
        if self.kind != "push_gossip":
            raise RuntimeError("call build() first")
        n, k = self.n, self.fanout
        # sender i picks k distinct receivers != i; a drawn duplicate is redrawn with a new counter
        i = np.arange(n)[:, None]
        recv = np.empty((n, k), dtype=np.int64)
        for j in range(k):
            attempt = 0
            todo = np.ones(n, dtype=bool)
            while todo.any():
                r = crng.integers(n - 1, self.seed, "push_gossip", round_, i[todo, 0], j, attempt)
                r = r + (r >= i[todo, 0])
                recv[todo, j] = r
                dup = np.zeros(n, dtype=bool)
                for jj in range(j):
                    dup |= recv[:, jj] == recv[:, j]
                todo, attempt = dup, attempt + 1
        receivers = recv
        senders = np.repeat(np.arange(n), k)
        order = np.lexsort((senders, receivers.ravel()))
        recv_sorted, send_sorted = receivers.ravel()[order], senders[order]
        indptr = np.zeros(n + 1, dtype=np.int64)
        np.add.at(indptr, recv_sorted + 1, 1)
        return np.cumsum(indptr), send_sorted

    def degrees(self, round_: int = 0) -> np.ndarray:
        indptr, _ = self.in_neighbors(round_)
        return np.diff(indptr)
