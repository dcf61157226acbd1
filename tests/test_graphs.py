"""Tests for ntkdyn.graphs: topologies, mixing rules, checks and spectra."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ntkdyn.graphs import (
    MIXING_RULES,
    TOPOLOGIES,
    as_graph,
    check_mixing,
    eigenvalues,
    is_doubly_stochastic,
    is_symmetric,
    lambda_min,
    load_adjacency,
    mixing,
    spectral_gap,
    topology,
)

PROMISES = {  # rule -> (doubly stochastic, symmetric) for every graph
    "metropolis": (True, True),
    "max_degree": (True, True),
    "uniform": (False, False),
}


@st.composite
def graph_sizes(draw: st.DrawFn, name: str) -> int:
    """A number of nodes the topology accepts."""
    if name == "torus":
        return draw(st.integers(2, 6)) * draw(st.integers(2, 6))
    if name == "hypercube":
        return 2 ** draw(st.integers(0, 5))
    if name == "small_world":
        return draw(st.integers(5, 40))
    return draw(st.integers(1, 40))


@settings(max_examples=300, deadline=None)
@given(data=st.data(), name=st.sampled_from(TOPOLOGIES), rule=st.sampled_from(MIXING_RULES),
       lazy=st.booleans(), seed=st.integers(0, 10_000))
def test_every_topology_and_rule_gives_a_valid_mixing_matrix(data, name, rule, lazy, seed):
    n = data.draw(graph_sizes(name), label="n")
    g = topology(name, n, seed=seed)
    assert sorted(g.nodes) == list(range(n))
    assert nx.is_connected(g)
    assert nx.number_of_selfloops(g) == 0

    doubly, symmetric = PROMISES[rule]
    w = check_mixing(mixing(g, rule, lazy=lazy), require_doubly_stochastic=doubly,
                     require_symmetric=symmetric)
    assert w.dtype == np.float64 and w.shape == (n, n)
    assert is_doubly_stochastic(w) == (doubly or bool(np.allclose(w.sum(0), 1.0)))
    ev = eigenvalues(w)
    assert np.isrealobj(ev)
    assert np.all(np.diff(ev) <= 1e-12)  # sorted descending
    assert np.all(np.abs(ev) <= 1.0 + 1e-10)
    assert np.sum(np.abs(ev - 1.0) < 1e-8) == 1  # single eigenvalue 1
    gap = spectral_gap(w)
    assert 0.0 < gap <= 1.0 + 1e-12
    if lazy:
        assert ev[-1] >= -1e-12
    if symmetric:
        assert lambda_min(w) == pytest.approx(ev[-1], abs=1e-12)
        if lazy:
            assert lambda_min(w) >= -1e-12


def test_complete_graph_metropolis_is_exact_averaging():
    for q in (1, 2, 5, 8):
        w = mixing(topology("complete", q))
        np.testing.assert_array_equal(w, np.full((q, q), 1.0 / q))
        assert spectral_gap(w) == pytest.approx(1.0, abs=1e-12)


def test_ring_of_four_metropolis_spectrum():
    w = mixing(topology("ring", 4))
    assert lambda_min(w) == pytest.approx(-1.0 / 3.0, abs=1e-14)
    np.testing.assert_allclose(eigenvalues(w), [1.0, 1 / 3, 1 / 3, -1 / 3], atol=1e-14)
    assert spectral_gap(w) == pytest.approx(2.0 / 3.0, abs=1e-14)
    assert lambda_min(mixing(topology("ring", 4), lazy=True)) == pytest.approx(1.0 / 3.0)


def test_single_agent():
    for name in ("ring", "path", "star", "complete", "grid", "hypercube"):
        g = topology(name, 1)
        assert g.number_of_nodes() == 1 and g.number_of_edges() == 0
    for rule in MIXING_RULES:
        np.testing.assert_array_equal(mixing(topology("ring", 1), rule), [[1.0]])
    assert spectral_gap([[1.0]]) == 1.0
    np.testing.assert_array_equal(check_mixing([[1.0]]), [[1.0]])


@pytest.mark.parametrize("n", [9, 12, 16, 20, 25, 36])
def test_torus_is_four_regular(n):
    g = topology("torus", n)
    assert {d for _, d in g.degree} == {4}
    assert g.number_of_edges() == 2 * n


def test_torus_rows_parameter_and_grid():
    g = topology("torus", 12, rows=3)
    assert g.number_of_edges() == 24
    with pytest.raises(ValueError, match="rows"):
        topology("torus", 12, rows=5)
    with pytest.raises(ValueError, match="torus.*n=7"):
        topology("torus", 7)
    grid = topology("grid", 12)  # 3 x 4
    assert sorted(d for _, d in grid.degree) == [2] * 4 + [3] * 6 + [4] * 2
    assert nx.is_isomorphic(topology("grid", 7), nx.path_graph(7))


def test_hypercube_of_eight_has_degree_three():
    g = topology("hypercube", 8)
    assert {d for _, d in g.degree} == {3}
    assert g.has_edge(0, 1) and g.has_edge(0, 2) and g.has_edge(0, 4) and not g.has_edge(0, 3)
    with pytest.raises(ValueError, match="power of 2"):
        topology("hypercube", 6)


def test_star_ring_path_shapes():
    assert dict(topology("star", 5).degree)[0] == 4
    assert topology("ring", 2).number_of_edges() == 1
    assert topology("path", 5).number_of_edges() == 4


def test_erdos_renyi_is_connected_and_reproducible():
    g1 = topology("erdos_renyi", 30, seed=3)
    g2 = topology("erdos_renyi", 30, seed=3)
    assert nx.is_connected(g1)
    assert sorted(g1.edges) == sorted(g2.edges)
    assert any(sorted(topology("erdos_renyi", 30, seed=s).edges) != sorted(g1.edges)
               for s in (4, 5, 6))
    assert nx.is_connected(topology("erdos_renyi", 20, seed=0, p=0.2))


def test_random_topologies_reject_hopeless_parameters():
    with pytest.raises(ValueError, match="'p'.*too small"):
        topology("erdos_renyi", 20, p=1e-4)
    with pytest.raises(ValueError, match="'radius'.*too small"):
        topology("geometric", 20, radius=1e-3)
    with pytest.raises(ValueError, match="'p'"):
        topology("erdos_renyi", 10, p=1.5)
    with pytest.raises(ValueError, match="'k'"):
        topology("small_world", 4)
    with pytest.raises(ValueError, match="'radius'"):
        topology("geometric", 10, radius=-1.0)


def test_geometric_and_small_world_reproducible():
    for name in ("geometric", "small_world"):
        a, b = topology(name, 25, seed=11), topology(name, 25, seed=11)
        assert nx.is_connected(a) and sorted(a.edges) == sorted(b.edges)
    assert {d for _, d in topology("small_world", 20, p=0.0).degree} == {4}


def test_unknown_topology_rule_and_parameters():
    with pytest.raises(ValueError, match="unknown topology 'wheel'.*ring.*small_world"):
        topology("wheel", 5)
    with pytest.raises(ValueError, match="unknown mixing rule 'laplacian'.*metropolis"):
        mixing(topology("ring", 5), "laplacian")
    with pytest.raises(ValueError, match="'p'.*accepts: none"):
        topology("ring", 5, p=0.3)
    with pytest.raises(ValueError, match="n must be an integer >= 1"):
        topology("ring", 0)


def test_as_graph_from_arrays():
    a = np.array([[1, 2, 0], [2, 0, 1], [0, 1, 5]], dtype=float)  # weights, self loops
    g = as_graph(a)
    assert sorted(g.edges) == [(0, 1), (1, 2)] and nx.number_of_selfloops(g) == 0
    np.testing.assert_array_equal(mixing(a), mixing(nx.path_graph(3)))
    with pytest.raises(ValueError, match="symmetric"):
        as_graph(np.array([[0, 1], [0, 0]]))
    with pytest.raises(ValueError, match="square"):
        as_graph(np.ones((2, 3)))
    relabelled = as_graph(nx.path_graph(["a", "b", "c"]))
    assert sorted(relabelled.nodes) == [0, 1, 2] and relabelled.nodes[0]["label"] == "a"


@pytest.mark.parametrize("suffix,sep", [(".txt", " "), (".csv", ","), (".npy", None)])
def test_load_adjacency(tmp_path, suffix, sep):
    a = nx.to_numpy_array(nx.cycle_graph(5), dtype=int)
    path = tmp_path / f"adj{suffix}"
    if sep is None:
        np.save(path, a)
    else:
        path.write_text("# ring of five\n" + "\n".join(sep.join(map(str, row)) for row in a))
    g = load_adjacency(path)
    assert nx.is_isomorphic(g, nx.cycle_graph(5)) and sorted(g.nodes) == list(range(5))
    np.testing.assert_array_equal(mixing(g), mixing(nx.cycle_graph(5)))


# --------------------------------------------------------------- check_mixing: one defect each


def test_check_mixing_rejects_non_square():
    with pytest.raises(ValueError, match=r"W_test must be .*square.*shape \(2, 3\)"):
        check_mixing(np.full((2, 3), 0.5), name="W_test")


def test_check_mixing_rejects_nan():
    w = np.full((2, 2), 0.5)
    w[1, 0] = np.nan
    with pytest.raises(ValueError, match=r"W_test must have finite entries.*W_test\[1, 0\] = nan"):
        check_mixing(w, name="W_test")


def test_check_mixing_rejects_negative_entry():
    w = np.array([[0.5, 0.5, 0.0], [0.5, 0.7, -0.2], [0.0, 0.2, 0.8]])
    with pytest.raises(ValueError, match=r"W_test must have non-negative.*W_test\[1, 2\] = -0.2"):
        check_mixing(w, name="W_test")


def test_check_mixing_rejects_bad_row_sum():
    w = np.array([[0.5, 0.5, 0.0], [0.25, 0.5, 0.25], [0.0, 0.5, 0.6]])
    with pytest.raises(ValueError, match=r"W_test must be row stochastic.*row 2 sums to 1.1"):
        check_mixing(w, name="W_test")


def test_check_mixing_rejects_bad_column_sum_when_required():
    w = mixing(topology("star", 4), "uniform")
    check_mixing(w, name="W_test")
    with pytest.raises(ValueError, match=r"W_test must be doubly stochastic.*column 0 sums"):
        check_mixing(w, name="W_test", require_doubly_stochastic=True)


def test_check_mixing_rejects_asymmetry_when_required():
    w = np.array([[0.5, 0.5, 0.0], [0.25, 0.5, 0.25], [0.0, 0.5, 0.5]])
    check_mixing(w, name="W_test")  # fine unless symmetry is required
    assert not is_symmetric(w)
    with pytest.raises(ValueError, match=r"W_test must be symmetric.*max \|W - W\^T\| = 0.25"):
        check_mixing(w, name="W_test", require_symmetric=True)
    with pytest.raises(ValueError, match="symmetric"):
        lambda_min(w)


def test_check_mixing_rejects_disconnected():
    block = np.full((2, 2), 0.5)
    w = np.block([[block, np.zeros((2, 2))], [np.zeros((2, 2)), block]])
    assert is_doubly_stochastic(w) and spectral_gap(w) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match=r"W_test must be connected.*2 components.*\[0, 1\]"):
        check_mixing(w, name="W_test")


def test_check_mixing_rejects_one_way_graph():
    w = np.array([[1.0, 0.0], [0.5, 0.5]])  # agent 0 never hears agent 1
    with pytest.raises(ValueError, match="W_test must be connected.*strongly"):
        check_mixing(w, name="W_test")


def test_uniform_rule_on_irregular_graph():
    w = mixing(topology("star", 5), "uniform")
    np.testing.assert_allclose(w[0], np.full(5, 0.2))
    np.testing.assert_allclose(w[1], [0.5, 0.5, 0, 0, 0])
    assert not is_symmetric(w) and not is_doubly_stochastic(w)
    ev = eigenvalues(w)
    assert ev.dtype == np.float64 and ev[0] == pytest.approx(1.0)


def test_small_world_parameters():
    with pytest.raises(ValueError, match="'k' must be even"):
        topology("small_world", 10, k=3)
    with pytest.raises(ValueError, match="'p' must lie in"):
        topology("small_world", 10, p="lots")


def test_resolve_mixing_names_a_wrong_size_before_checking_the_matrix():
    """A square matrix for another number of agents is refused as such, whatever else is
    wrong with it (np.eye(4) for 3 agents was 'must be connected ... 4 components')."""
    from ntkdyn.graphs.sequences import resolve_mixing

    for w in (np.eye(4), np.full((4, 4), 0.25)):
        with pytest.raises(ValueError, match=r"^mixing: expected a \(3, 3\) matrix for 3 "
                                             r"agents, got shape \(4, 4\)$"):
            resolve_mixing(w, 3)
    with pytest.raises(ValueError, match="connected"):  # the right size: checked as before
        resolve_mixing(np.eye(3), 3)
    with pytest.raises(ValueError, match="square"):
        resolve_mixing(np.ones((3, 4)) / 4, 3)
    w, process = resolve_mixing(np.full((3, 3), 1 / 3), 3)
    assert process is None and w.shape == (3, 3)


def test_groups_mixing_at_draws_each_sequence_then_the_expected_matrix():
    """The one place both solvers draw a step's matrices: group ``s`` is sequence ``s``'s
    draw of event ``round(t) m + j`` (repeated ``copies`` times), then ``E[W]``
    ``expected_groups`` times; a periodic sequence is ``cycle[e mod P]``."""
    import jax.numpy as jnp

    from ntkdyn.graphs.sequences import (
        groups_mixing_at,
        periodic,
        process_arrays,
        random_edges,
        supported_sampler,
    )

    ring = topology("ring", 6)
    proc = random_edges(ring, 0.5, seed=3)
    sampler = supported_sampler(proc)
    data = process_arrays(proc, 3, copies=2, expected_groups=2)
    at = groups_mixing_at(data, jnp.asarray(4.0), sampler=sampler, mixes_per_step=2)
    assert at.neighbours == sampler.neighbours
    w = np.asarray(at(1))
    assert w.shape == (8, 6, 6)
    for s in range(3):
        draw = np.asarray(proc.sampler(proc.device_arrays(), 9, proc.key(s)))
        np.testing.assert_array_equal(w[s], draw)
        np.testing.assert_array_equal(w[s + 3], draw)
    assert not np.array_equal(w[0], w[1])  # the sequences differ (p = 0.5, 6 edges)
    for g in (6, 7):
        np.testing.assert_allclose(w[g], np.asarray(proc.expected()), atol=1e-15)

    cycle = [mixing(ring), mixing(topology("star", 6))]
    per = periodic(cycle)
    data = process_arrays(per, None, copies=5, expected_groups=4)
    assert set(data) == {"mix_arrays", "mix_keys"} and data["mix_keys"].shape[0] == 1
    at = groups_mixing_at(data, jnp.asarray(2.0), sampler=supported_sampler(per),
                          mixes_per_step=1)
    np.testing.assert_allclose(np.asarray(at(1))[0], cycle[1], atol=1e-15)  # event 3
    np.testing.assert_allclose(np.asarray(at(0))[0], cycle[0], atol=1e-15)  # event 2


def test_symmetrised_uniform_rule_is_symmetric_with_the_same_spectrum():
    """``symmetrised``: the "uniform" rule on an irregular graph is reversible
    (``pi`` proportional to degree + 1): ``Pi^{1/2} W Pi^{-1/2}`` is symmetric with W's
    eigenvalues (1e-12); a symmetric W is returned as it is; a non-reversible
    row-stochastic W (a directed 3-cycle with self-loops) and a non-stochastic one give
    None."""
    from ntkdyn import graphs

    w = graphs.mixing(graphs.topology("erdos_renyi", 12, p=0.3, seed=4), "uniform")
    assert not graphs.is_symmetric(w)
    sym = graphs.symmetrised(w)
    assert graphs.is_symmetric(sym, atol=1e-14)
    np.testing.assert_allclose(np.sort(np.linalg.eigvalsh(sym)),
                               np.sort(np.linalg.eigvals(w).real), atol=1e-12)
    deg = np.count_nonzero(w, axis=1)
    pi = deg / deg.sum()
    np.testing.assert_allclose(sym, np.sqrt(pi)[:, None] * w / np.sqrt(pi)[None, :],
                               atol=1e-14)
    m = graphs.mixing(graphs.topology("star", 5))
    assert graphs.symmetrised(m) is m
    cycle = 0.5 * np.eye(3) + 0.5 * np.roll(np.eye(3), 1, axis=1)
    assert graphs.symmetrised(cycle) is None
    assert graphs.symmetrised(2.0 * w) is None


def test_graph_seeds_are_checked():
    """seed=None was int()'s TypeError and seed=1.7 was truncated to 1 (the same graph)."""
    import ntkdyn as nd

    ring = nd.graphs.topology("ring", 4)
    for call in (lambda s: nd.graphs.topology("erdos_renyi", 6, seed=s),
                 lambda s: nd.graphs.random_edges(ring, 0.5, seed=s),
                 lambda s: nd.graphs.one_random_edge(ring, seed=s)):
        for seed in (None, 1.7, -1):
            with pytest.raises(ValueError, match="^seed: expected an integer >= 0"):
                call(seed)


def test_flags_and_names_that_were_taken_loosely_are_checked():
    """mixing(..., lazy="no") made W lazy ("no" is truthy); random_edges(p=True) was a
    probability of 1; periodic with fewer names than matrices kept them."""
    import ntkdyn as nd

    ring = nd.graphs.topology("ring", 4)
    with pytest.raises(ValueError, match="^lazy: expected True or False, got 'no'"):
        nd.graphs.mixing(ring, lazy="no")
    with pytest.raises(ValueError, match=r"^p: expected a probability in \(0, 1\], got True"):
        nd.graphs.random_edges(ring, True)
    w = nd.graphs.mixing(ring)
    with pytest.raises(ValueError, match=r"^names: expected one name per matrix \(2\), got 1"):
        nd.graphs.periodic([w, w], names=["a"])
    assert nd.graphs.periodic([w, w], names=["a", "b"]).names == ("a", "b")


def test_process_matrix_and_partition_shard_indices_are_integers():
    """matrix(1.5) was matrix(1), matrix(0, sample=-1) an OverflowError, shard(1.5) an
    IndexError."""
    import ntkdyn as nd

    process = nd.graphs.random_edges(nd.graphs.topology("ring", 4), 0.5, seed=0)
    for kw, name in ((dict(event=1.5), "event"), (dict(event=0, sample=-1), "sample")):
        with pytest.raises(ValueError, match=f"^{name}: expected an integer >= 0"):
            process.matrix(**kw)
    parts = nd.data.partition(nd.data.digits(classes=[0, 1], n_train=20, n_test=4), 2)
    with pytest.raises(ValueError, match=r"^agent index q must be an integer in \[0, 2\)"):
        parts.shard(1.5)
