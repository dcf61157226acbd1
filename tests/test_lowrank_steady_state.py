"""The fixed point on the low-rank coordinates (ntkdyn.lowrank.steady_state, issue 17):
it is the exact path's fixed point with the truncated kernel Phi Phi^T."""

import numpy as np
import pytest
from test_lowrank_gossip import _rank_r_problem  # rank 6, N 48: f_0 - Y outside its range

import ntkdyn as nd
from ntkdyn import lowrank
from ntkdyn.dynamics.problem import make_problem
from ntkdyn.dynamics.steady_state import fixed_point
from ntkdyn.lowrank.steady_state import lowrank_fixed_point

FIELDS = ("train_loss", "test_loss", "train_acc", "test_acc", "param_dist", "consensus_dist",
          "central_dist", "train_outputs", "test_outputs")
REL = 1e-8  # asserted (measured <= 8e-14)


@pytest.mark.parametrize("algorithm", ["dgd", "atc", "cta", "gradient_tracking", "extra"])
def test_equals_the_exact_fixed_point_of_the_truncated_kernel(algorithm):
    """Every per-agent quantity and the centralised solution equal the exact path's fixed
    point with the same kernel to 1e-8 relative (distances relative to the largest
    parameter distance: gradient tracking and EXTRA end in consensus, 1e-16 on both)."""
    kern, kern_t, y, yt, agent, r, q = _rank_r_problem()
    w = nd.graphs.mixing(nd.graphs.topology("ring", q))
    lr = [0.5, 0.4, 0.5, 0.45]
    exact = fixed_point(make_problem(kern, y, agent, w, kernel_test_train=kern_t, y_test=yt),
                        algorithm, lr)
    factor = lowrank.factorize(lowrank.kernel_columns(kern, kern_t), r)
    low = lowrank_fixed_point(factor, y, agent, w, algorithm, lr, y_test=yt)
    dist = float(np.max(exact.param_dist))
    for f in FIELDS:
        a, b = getattr(exact, f), getattr(low, f)
        scale = dist if f.endswith("_dist") else max(float(np.max(np.abs(a))), 1e-300)
        assert np.max(np.abs(a - b)) <= REL * scale, (algorithm, f)
    for f in ("consensus_gap", "central_gap"):
        assert abs(getattr(exact, f) - getattr(low, f)) <= REL * dist, f
    for f in ("central_train_loss", "central_test_loss", "central_param_dist"):
        assert abs(getattr(exact, f) - getattr(low, f)) <= REL * abs(getattr(exact, f)), f


def test_random_gossip_is_the_mean_state_and_a_periodic_sequence_is_refused():
    """Random gossip: the fixed point of E[W], as on the exact path; a periodic sequence
    is a ValueError naming mixing (a periodic orbit, no fixed point)."""
    kern, kern_t, y, yt, agent, r, q = _rank_r_problem(1)
    factor = lowrank.factorize(lowrank.kernel_columns(kern, kern_t), r)
    ring = nd.graphs.topology("ring", q)
    gossip = nd.graphs.random_edges(ring, 0.5, seed=0)
    low = lowrank_fixed_point(factor, y, agent, gossip, "dgd", 0.4, y_test=yt)
    mean = lowrank_fixed_point(factor, y, agent, gossip.expected(), "dgd", 0.4, y_test=yt)
    assert np.max(np.abs(low.test_loss - mean.test_loss)) <= 1e-14 * np.max(mean.test_loss)
    periodic = nd.graphs.periodic([nd.graphs.mixing(ring), np.full((q, q), 1.0 / q)])
    with pytest.raises(ValueError, match="^mixing: with a periodic mixing sequence"):
        lowrank_fixed_point(factor, y, agent, periodic, "dgd", 0.4)


def test_check_with_rank_reports_the_steady_state(tmp_path):
    """``ntkdyn check`` with ``[prediction] rank``: the steady state of the truncated
    dynamics; at full rank the exact check's (test loss to 1e-6 relative; the kernel is
    positive definite, so DGD's fixed point is the consensual interpolant and both gaps
    are round-off, ~1e-16, on both paths: asserted to 1e-10)."""
    from conftest import TINY_TOML

    from ntkdyn.preflight import _render, check

    exact_cfg = tmp_path / "e.toml"
    exact_cfg.write_text(TINY_TOML + '[prediction]\nf0 = "mean"\n')
    exact = check(str(exact_cfg))
    cfg = tmp_path / "f.toml"
    cfg.write_text(TINY_TOML + '[prediction]\nrank = 60\nf0 = "mean"\n')
    full = check(str(cfg))
    a, b = exact.prediction["steady_state_test_loss"], full.prediction["steady_state_test_loss"]
    assert a is not None and abs(a - b) <= 1e-6 * a, (a, b)
    for key in ("steady_state_consensus_gap", "steady_state_distance_to_centralised"):
        a, b = exact.prediction[key], full.prediction[key]
        assert a is not None and b is not None and abs(a - b) <= 1e-10, (key, a, b)
    text = _render(full)
    assert "steady state: consensus gap" in text and "low-rank coordinates" in text


def test_check_skips_a_large_steady_state_with_a_note(tmp_path, monkeypatch):
    """Above ``LOW_RANK_FIXED_POINT_MAX`` unknowns the check solves the steady state of DGD
    with a symmetric W by conjugate gradients, and of other schedules not at all (dense in
    a check): the report says why, and the JSON fields are null."""
    from conftest import TINY_TOML

    from ntkdyn import preflight

    monkeypatch.setattr(preflight, "LOW_RANK_FIXED_POINT_MAX", 100)  # 3 agents x rank 60
    cfg = tmp_path / "f.toml"
    text = TINY_TOML + '[prediction]\nrank = 60\nf0 = "mean"\n'
    cfg.write_text(text)  # DGD on a ring: conjugate gradients, at any size
    assert preflight.check(str(cfg)).prediction["steady_state_consensus_gap"] is not None
    cfg.write_text(text.replace("[training]\n", '[training]\nalgorithm = "atc"\n'))
    rep = preflight.check(str(cfg))
    assert rep.prediction["steady_state_consensus_gap"] is None
    assert "180 unknowns" in rep.prediction["steady_state_note"]
    assert "steady state: none (not computed on the low-rank coordinates: 180" in \
        preflight._render(rep)


def test_conjugate_gradients_equal_the_dense_solve_for_dgd():
    """DGD with a symmetric W: the preconditioned CG solve (any size, no (Q r)^2 matrix)
    equals the dense LU to 1e-10 (per-agent rates, a non-consensual fixed point); ``"cg"``
    for another schedule, or an unknown method, is a ValueError naming ``method``."""
    kern, kern_t, y, yt, agent, r, q = _rank_r_problem(2)
    w = nd.graphs.mixing(nd.graphs.topology("ring", q))
    factor = lowrank.factorize(lowrank.kernel_columns(kern, kern_t), r)
    lr = [0.5, 0.3, 0.45, 0.4]
    dense = lowrank_fixed_point(factor, y, agent, w, "dgd", lr, y_test=yt, method="dense")
    cg = lowrank_fixed_point(factor, y, agent, w, "dgd", lr, y_test=yt)  # auto: cg
    assert dense.consensus_gap > 1e-3  # not the consensual interpolant
    for f in FIELDS:
        a, b = getattr(dense, f), getattr(cg, f)
        assert np.max(np.abs(a - b)) <= 1e-10 * max(float(np.max(np.abs(a))), 1.0), f
    with pytest.raises(ValueError, match="^method: 'cg' solves DGD"):
        lowrank_fixed_point(factor, y, agent, w, "atc", lr, method="cg")
    with pytest.raises(ValueError, match="^method: expected one of"):
        lowrank_fixed_point(factor, y, agent, w, "dgd", lr, method="lu")


@pytest.mark.parametrize("topology", ["star", "path"])
def test_conjugate_gradients_solve_a_reversible_mixing_in_its_similar_coordinates(topology):
    """DGD with the uniform rule on a star / path (row-stochastic, not symmetric, reversible):
    "auto" takes conjugate gradients on Pi^{1/2} M Pi^{-1/2} and equals the dense LU of the
    non-symmetric system to 1e-10 (per-agent rates).  A mutation that omits the Pi^{1/2}
    scaling fails (checked by hand: error 2.6e-3)."""
    kern, kern_t, y, yt, agent, r, q = _rank_r_problem(2)
    w = nd.graphs.mixing(nd.graphs.topology(topology, q), rule="uniform")
    assert not nd.graphs.is_symmetric(w)
    factor = lowrank.factorize(lowrank.kernel_columns(kern, kern_t), r)
    lr = [0.5, 0.3, 0.45, 0.4]
    info = {}
    cg = lowrank_fixed_point(factor, y, agent, w, "dgd", lr, y_test=yt, info=info)
    assert info["method"] == "cg" and info["iterations"] < 200, info
    dense = lowrank_fixed_point(factor, y, agent, w, "dgd", lr, y_test=yt, method="dense")
    assert dense.consensus_gap > 1e-3
    for f in FIELDS:
        a, b = getattr(dense, f), getattr(cg, f)
        assert np.max(np.abs(a - b)) <= 1e-10 * max(float(np.max(np.abs(a))), 1.0), f


def test_known_fixed_points_need_no_system():
    """Gradient tracking, NEXT, DIGing (per-agent rates) and EXTRA (one rate) on a doubly
    stochastic W: "auto" returns the centralised solution at every agent without a system
    (theory/fixed_point.md section 4a), equal to the dense solve to 1e-10; momentum on DGD
    solves its base's system by conjugate gradients, equal to its own dense solve."""
    kern, kern_t, y, yt, agent, r, q = _rank_r_problem(2)
    w = nd.graphs.mixing(nd.graphs.topology("ring", q))
    factor = lowrank.factorize(lowrank.kernel_columns(kern, kern_t), r)
    cases = [(nd.algorithms.GRADIENT_TRACKING, [0.5, 0.3, 0.45, 0.4], "consensual"),
             (nd.algorithms.NEXT, [0.5, 0.3, 0.45, 0.4], "consensual"),
             (nd.algorithms.DIGING, [0.2, 0.1, 0.15, 0.2], "consensual"),
             (nd.algorithms.EXTRA, 0.4, "consensual"),
             (nd.algorithms.EXTRA, [0.5, 0.3, 0.45, 0.4], "dense"),
             (nd.algorithms.momentum(0.5), [0.3, 0.2, 0.25, 0.3], "cg")]
    for algo, lr, expected in cases:
        info = {}
        auto = lowrank_fixed_point(factor, y, agent, w, algo, lr, y_test=yt, info=info)
        assert info["method"] == expected, (algo.name, info)
        dense = lowrank_fixed_point(factor, y, agent, w, algo, lr, y_test=yt, method="dense")
        for f in FIELDS:
            a, b = getattr(dense, f), getattr(auto, f)
            assert np.max(np.abs(a - b)) <= 1e-10 * max(float(np.max(np.abs(a))), 1.0), \
                (algo.name, f)
        assert auto.algorithm == algo.name


def test_check_reports_gradient_tracking_steady_state_above_the_dense_limit(tmp_path,
                                                                           monkeypatch):
    """Above LOW_RANK_FIXED_POINT_MAX unknowns a check reports gradient tracking's steady
    state (consensus at the centralised solution, no system); it was "not computed"."""
    from conftest import TINY_TOML

    from ntkdyn import preflight

    monkeypatch.setattr(preflight, "LOW_RANK_FIXED_POINT_MAX", 100)  # 3 x 3 agents x rank 60
    cfg = tmp_path / "f.toml"
    cfg.write_text(TINY_TOML.replace("[training]\n", '[training]\nalgorithm = '
                                     '"gradient_tracking"\n') + '[prediction]\nrank = 60\n'
                   'f0 = "mean"\n')
    rep = preflight.check(str(cfg))
    gap = rep.prediction["steady_state_consensus_gap"]
    assert gap is not None and gap < 1e-12 and "steady_state_note" not in rep.prediction


def test_says_whether_the_rate_reaches_the_fixed_point():
    """Above the truncated dynamics' lr* the fixed point is returned flagged: stable False,
    the stable set in words, a UserWarning (it was returned unflagged); below it stable
    True and no warning; ``verify=False`` skips the search (None).  Momentum(0.9) on
    issue 16's W3, stable on about [1.9, 6.62] only: 0.5 is flagged, 3.0 is not."""
    import warnings

    kern, kern_t, y, yt, agent, r, q = _rank_r_problem()
    w = nd.graphs.mixing(nd.graphs.topology("ring", q))
    factor = lowrank.factorize(lowrank.kernel_columns(kern, kern_t), r)
    lr_star = lowrank.lowrank_stable_set(factor, agent, w, "dgd").lr_star
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        inside = lowrank_fixed_point(factor, y, agent, w, "dgd", 0.5 * lr_star, y_test=yt)
    assert inside.stable is True and "stable=True" in repr(inside)
    with pytest.warns(UserWarning, match="does not reach this fixed point"):
        outside = lowrank_fixed_point(factor, y, agent, w, "dgd", 1.2 * lr_star, y_test=yt)
    assert outside.stable is False and outside.stable_set
    assert "stable=False (not reached: " in repr(outside)
    quiet = lowrank_fixed_point(factor, y, agent, w, "dgd", 1.2 * lr_star, verify=False)
    assert quiet.stable is None
    np.testing.assert_array_equal(quiet.train_outputs, outside.train_outputs)

    w3 = np.array([[.5, .5, 0], [0, .5, .5], [.5, 0, .5]])
    eye = lowrank.factorize(lowrank.kernel_columns(np.eye(6)), 6)
    ones, agents3 = np.ones((6, 1)), np.arange(6) % 3
    momentum = nd.algorithms.momentum(0.9)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert lowrank_fixed_point(eye, ones, agents3, w3, momentum, 3.0).stable is True
    with pytest.warns(UserWarning, match="diverge at lr=0.5"):
        assert lowrank_fixed_point(eye, ones, agents3, w3, momentum, 0.5).stable is False


def test_losses_at_an_interpolating_fixed_point_are_not_negative():
    """At full rank DGD / ATC interpolate: the losses are round-off of the expanded quadratic
    form, which came out as -1.2e-16 (negative, breaking log plots); now >= 0 and <= 1e-14."""
    kern, kern_t, y, yt, agent, r, q = _rank_r_problem()
    w = nd.graphs.mixing(nd.graphs.topology("ring", q))
    factor = lowrank.factorize(lowrank.kernel_columns(kern + 0.5 * np.eye(len(y)), kern_t),
                               len(y))
    for algorithm in ("dgd", "atc"):
        fp = lowrank_fixed_point(factor, y, agent, w, algorithm, 0.3, verify=False)
        assert np.all(fp.train_loss >= 0) and np.all(fp.train_loss <= 1e-14), fp.train_loss
