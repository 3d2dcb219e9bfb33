"""Topologies: degrees, connectivity, symmetry; push gossip's fanout."""

import networkx as nx
import numpy as np
import pytest

from fedsim.topology import Topology


def _graph(t, r=0):
    indptr, idx = t.in_neighbors(r)
    g = nx.DiGraph()
    g.add_nodes_from(range(t.n))
    for i in range(t.n):
        for j in idx[indptr[i] : indptr[i + 1]]:
            g.add_edge(int(j), i)
    return g


@pytest.mark.parametrize(
    ("kind", "kw"),
    [
        ("complete", {}),
        ("ring", {}),
        ("k_regular", {"degree": 4}),
        ("erdos_renyi", {"p": 0.3}),
        ("watts_strogatz", {"degree": 4, "p": 0.2}),
    ],
)
def test_static_graphs_connected_symmetric_no_self_loops(kind, kw):
    t = Topology(kind, 20, seed=1, **kw).build()
    g = _graph(t)
    assert nx.is_strongly_connected(g)
    assert all(not g.has_edge(i, i) for i in range(20))
    assert all(g.has_edge(b, a) for a, b in g.edges)  # undirected


def test_degrees():
    assert set(Topology("complete", 9, 0).build().degrees()) == {8}
    assert set(Topology("ring", 9, 0).build().degrees()) == {2}
    assert set(Topology("k_regular", 12, 0, degree=5).build().degrees()) == {5}


def test_bad_parameters_name_the_field():
    with pytest.raises(ValueError, match="topology.degree"):
        Topology("k_regular", 7, 0, degree=3).build()  # n·k odd
    with pytest.raises(ValueError, match="topology.fanout"):
        Topology("push_gossip", 5, 0, fanout=5).build()


def test_push_gossip_fanout_distinct_receivers_changes_each_round():
    t = Topology("push_gossip", 50, seed=0, fanout=5).build()
    g0, g1 = _graph(t, 0), _graph(t, 1)
    for g in (g0, g1):
        assert all(g.out_degree(i) == 5 for i in range(50))
        assert all(not g.has_edge(i, i) for i in range(50))
    assert set(g0.edges) != set(g1.edges)
    assert set(_graph(t, 0).edges) == set(g0.edges)  # deterministic


def test_push_gossip_scales():
    t = Topology("push_gossip", 10_000, seed=0, fanout=5).build()
    indptr, idx = t.in_neighbors(7)
    assert indptr[-1] == 50_000 and np.all(np.diff(indptr) >= 0)
