"""Time-varying and random mixing on the low-rank path (issue 17, ntkdyn.lowrank.gossip):
with a rank equal to the kernel's, the low-rank path equals the exact path on every
recorded quantity, for a periodic sequence and for random gossip (each sampled sequence,
their mean and the E[W] recursion)."""

import json

import numpy as np
import pytest
from conftest import TINY_TOML, assert_fields_close

import ntkdyn as nd
from ntkdyn import lowrank
from ntkdyn.lowrank.gossip import predict_lowrank_process
from ntkdyn.lowrank.stability import FeatureStepOperator
from ntkdyn.trajectory import GossipTrajectory

FIELDS = ("train_loss", "local_loss", "objective", "train_acc", "param_dist", "consensus_dist",
          "central_dist", "central_train_loss", "central_objective", "central_param_dist",
          "mean_model_train_loss", "mean_model_train_acc", "test_loss", "test_acc",
          "central_test_loss", "mean_model_test_loss", "mean_model_test_acc",
          "train_outputs", "test_outputs")
REL = 1e-10  # relative agreement asserted (measured <= 1e-15)


def _rank_r_problem(seed: int = 0):
    """A kernel built from r = 6 features (N = 48, M = 16, K = 3, Q = 4, unequal shards)."""
    rng = np.random.default_rng(seed)
    n, m, r, k, q = 48, 16, 6, 3, 4
    feats, feats_t = rng.normal(size=(n, r)), rng.normal(size=(m, r))
    kern, kern_t = feats @ feats.T / r, feats_t @ feats.T / r
    y, yt = np.eye(k)[rng.integers(0, k, n)], np.eye(k)[rng.integers(0, k, m)]
    agent = rng.choice(q, size=n, p=[0.4, 0.2, 0.2, 0.2])
    return kern, kern_t, y, yt, agent, r, q


def _process(kind: str, q: int):
    ring = nd.graphs.topology("ring", q)
    if kind == "periodic":  # two disconnected matchings whose union is the ring
        a = np.eye(q)
        b = np.eye(q)
        for i in range(0, q, 2):
            a[i, i] = a[i + 1, i + 1] = a[i, i + 1] = a[i + 1, i] = 0.5
            j = (i + 2) % q
            b[i + 1, i + 1] = b[j, j] = b[i + 1, j] = b[j, i + 1] = 0.5
        return nd.graphs.periodic([a, b])
    if kind == "random_edges":
        return nd.graphs.random_edges(ring, 0.5, seed=3)
    return nd.graphs.one_random_edge(ring, seed=5)


def _assert_same(exact, low, where: str):
    """Every field to ``REL`` relative of its largest value; distances also within 1e-12
    of the largest parameter distance, the round-off of a distance that is exactly zero
    (the quadratic forms cancel: gradient tracking's consensus distance on a periodic
    sequence of matchings is 3.5e-18 on the exact path, 0 on the low-rank one)."""
    floor = 1e-12 * float(np.max(np.abs(exact.param_dist)))
    for f in FIELDS:
        a, b = getattr(exact, f), getattr(low, f)
        if a is None:
            assert b is None, (where, f)
            continue
        assert a.shape == b.shape, (where, f, a.shape, b.shape)
        scale = max(float(np.max(np.abs(a))), 1e-300)
        atol = floor if f.endswith("_dist") else 0.0
        assert np.max(np.abs(a - b)) <= REL * scale + atol, \
            (where, f, np.max(np.abs(a - b)) / scale)
    assert np.array_equal(exact.steps, low.steps) and exact.status == low.status == "ok"


@pytest.mark.parametrize("form", ["gram", "features"])
@pytest.mark.parametrize("kind", ["periodic", "random_edges", "one_edge"])
@pytest.mark.parametrize("algorithm", ["dgd", "atc"])
def test_rank_r_kernel_with_a_mixing_process_matches_exact_path(algorithm, kind, form):
    kern, kern_t, y, yt, agent, r, q = _rank_r_problem()
    proc = _process(kind, q)
    samples = None if kind == "periodic" else 3
    steps = range(0, 41, 8)
    lr = [0.4, 0.3, 0.5, 0.35]
    exact = nd.predict_from_kernels(kern, y, agent, proc, lr, steps, algorithm,
                                    kernel_test_train=kern_t, y_test=yt, record_outputs=True,
                                    samples=samples)
    factor = lowrank.factorize(lowrank.kernel_columns(kern, kern_t), r)
    low = predict_lowrank_process(factor, y, agent, proc, lr, steps, algorithm, y_test=yt,
                                  record_outputs=True, samples=samples, form=form)
    assert type(low) is type(exact)
    assert low.metadata["mixing_process"] == exact.metadata["mixing_process"]
    assert low.metadata["path"] == "low_rank" and low.metadata["low_rank"]["rank"] == r
    _assert_same(exact, low, "mean")  # periodic: the run; random: the mean over sequences
    if kind == "periodic":
        return
    assert isinstance(low, GossipTrajectory) and low.samples == 3
    _assert_same(exact.expected, low.expected, "E[W]")
    for s in range(3):
        _assert_same(exact.sequence(s), low.sequence(s), f"sequence {s}")
    for f, band in exact.quantiles.items():
        assert np.allclose(band, low.quantiles[f], rtol=REL, atol=1e-300), f
    # the sampled sequences really differ (the test would not see a shared matrix)
    assert np.max(np.abs(low.per_sample["param_dist"][0] - low.per_sample["param_dist"][1])) \
        > 1e-6


@pytest.mark.parametrize("algorithm", ["p2pl", "gradient_tracking"])
def test_multi_mix_and_memory_schedules_on_a_periodic_sequence(algorithm):
    """P2PL (two consensus mixes per step, two phases) and gradient tracking (memory) draw
    the sequence's events as the exact path does."""
    kern, kern_t, y, yt, agent, r, q = _rank_r_problem(seed=1)
    algo = nd.algorithms.p2pl(local_steps=2, consensus_steps=2) if algorithm == "p2pl" \
        else algorithm
    proc = _process("periodic", q)
    steps = range(0, 25, 6)
    exact = nd.predict_from_kernels(kern, y, agent, proc, 0.3, steps, algo,
                                    kernel_test_train=kern_t, y_test=yt, record_outputs=True)
    factor = lowrank.factorize(lowrank.kernel_columns(kern, kern_t), r)
    low = predict_lowrank_process(factor, y, agent, proc, 0.3, steps, algo, y_test=yt,
                                  record_outputs=True)
    _assert_same(exact, low, algorithm)
    if algorithm == "p2pl":
        assert np.array_equal(exact.phase, low.phase)


def test_lowrank_predict_dispatches_a_process_with_auto_rank():
    """``lowrank.predict`` (the factor chosen by ``rank="auto"``) runs a process; at full
    rank the estimate is ~0 and the trajectory is the exact one."""
    kern, kern_t, y, yt, agent, r, q = _rank_r_problem(seed=2)
    proc = _process("random_edges", q)
    steps = range(0, 31, 10)
    exact = nd.predict_from_kernels(kern, y, agent, proc, 0.4, steps, "dgd",
                                    kernel_test_train=kern_t, y_test=yt, samples=4)
    low = lowrank.predict(lowrank.kernel_columns(kern, kern_t), y, agent, proc, 0.4, steps,
                          rank=r, y_test=yt, samples=4)
    _assert_same(exact, low, "lowrank.predict")
    assert low.metadata["low_rank"]["error_estimate"] <= 1e-8
    assert low.metadata["mixing"] == exact.metadata["mixing"]  # E[W] on both paths


@pytest.fixture(scope="module")
def digits_problem():
    data = nd.data.digits(classes=[0, 1, 2, 3], n_train=60, n_test=30, seed=0)
    parts = nd.data.partition(data, agents=4, scheme="dirichlet", alpha=1.0, seed=0)
    arch = nd.models.MLP(hidden=(64, 64), out=4, activation="erf", W_std=1.2, b_std=0.3)
    return data, parts, arch


@pytest.mark.parametrize("kind", ["periodic", "random_edges"])
def test_nd_predict_full_rank_with_a_process_equals_exact_path(digits_problem, kind):
    """``nd.predict(rank=N, f0="mean")`` with a sequence: the analytic factor is exact to
    round-off, so the trajectories agree (asserted 1e-8, as tests/test_lowrank.py)."""
    data, parts, arch = digits_problem
    proc = _process(kind, 4)
    call = dict(lr=0.4, algorithm="atc", steps=range(0, 41, 10), f0="mean",
                samples=None if kind == "periodic" else 4)
    exact = nd.predict(arch, parts, proc, **call)
    low = nd.predict(arch, parts, proc, rank=data.num_train, **call)
    assert type(low) is type(exact) and low.metadata["path"] == "low_rank"
    for f in ("train_loss", "test_loss", "param_dist", "consensus_dist", "test_acc"):
        a, b = getattr(exact, f), getattr(low, f)
        assert np.max(np.abs(a - b)) <= 1e-8, (f, np.max(np.abs(a - b)))
    if kind != "periodic":
        assert np.max(np.abs(exact.expected.test_loss - low.expected.test_loss)) <= 1e-8


def test_unsupported_combinations_name_the_field(digits_problem):
    """samples with a periodic sequence (mean network), and draws or samples that do not
    fit one random network's independent networks on random gossip, are refused naming
    the field."""
    data, parts, arch = digits_problem
    call = dict(lr=0.3, steps=range(0, 21, 10), rank=8)
    with pytest.raises(ValueError, match="^rank: samples is for random mixing sequences"):
        nd.predict(arch, parts, _process("periodic", 4), f0="mean", samples=4, **call)
    kern, kern_t, y, yt, agent, r, q = _rank_r_problem()
    factor = lowrank.factorize(lowrank.kernel_columns(kern, kern_t), r)
    with pytest.raises(ValueError, match="^samples: only for a random mixing sequence"):
        predict_lowrank_process(factor, y, agent, _process("periodic", q), 0.3, [0, 5],
                                samples=2)
    with pytest.raises(ValueError, match="^mixing: predict_lowrank takes a static"):
        lowrank.predict_lowrank(factor, y, agent, _process("periodic", q), 0.3, [0, 5])
    from ntkdyn.dynamics.random_init import InitDraws
    from ntkdyn.lowrank.gossip import predict_random_lowrank_gossip

    g = np.zeros((64, 6))
    shared = InitDraws(train=g[:48], test=g[48:], seed=0, jitter=0.0)  # 6 networks, 1 column
    with pytest.raises(ValueError, match="^draws: independent networks need"):
        predict_random_lowrank_gossip(factor, shared, y, agent, _process("random_edges", q),
                                      0.3, [0, 5], y_test=yt)
    own = InitDraws(train=g[:48], test=g[48:], seed=0, jitter=0.0, outputs=3)  # 2 networks
    with pytest.raises(ValueError, match="^samples: with f0='random' network s runs on "
                                         "sequence s"):
        predict_random_lowrank_gossip(factor, own, y, agent, _process("random_edges", q), 0.3,
                                      [0, 5], y_test=yt, samples=3)
    with pytest.raises(ValueError, match="^mixing: expected a random mixing sequence"):
        predict_random_lowrank_gossip(factor, own, y, agent, _process("periodic", q), 0.3,
                                      [0, 5], y_test=yt)


def test_config_rank_with_a_sequence_and_every_f0():
    from ntkdyn.config.schema import config_from_dict

    cfg = config_from_dict({"prediction": {"rank": "auto"}, "topology": {"gossip": "edges"}})
    assert cfg.prediction.rank == "auto" and cfg.topology.gossip == "edges"  # f0 = random
    cfg = config_from_dict({"prediction": {"rank": 8, "f0": "mean"},
                            "topology": {"gossip": "edges"}})
    assert cfg.prediction.rank == 8 and cfg.topology.gossip == "edges"
    cfg = config_from_dict({"prediction": {"rank": 8, "f0": "mean"},
                            "topology": {"sequence": ["ring", "complete"]}})
    assert cfg.topology.sequence == ["ring", "complete"]
    # one random network (the analytic default) runs a periodic sequence on the low-rank path
    cfg = config_from_dict({"prediction": {"rank": 8},
                            "topology": {"sequence": ["ring", "complete"]}})
    assert cfg.prediction.rank == 8 and cfg.topology.sequence == ["ring", "complete"]


def test_predict_command_with_rank_and_gossip(tmp_path):
    """``ntkdyn predict`` with ``[prediction] rank`` and random gossip: the low-rank path's
    distribution over sampled sequences, equal to the exact path's at full rank."""
    from ntkdyn import Trajectory
    from ntkdyn.cli import main

    gossip = ('[topology]\nname = "ring"\ngossip = "edges"\ngossip_p = 0.5\n'
              'gossip_samples = 4\n')
    base = TINY_TOML.replace('[topology]\nname = "ring"\n', gossip)
    cfg = tmp_path / "c.toml"
    cfg.write_text(base + '[prediction]\nrank = 60\nf0 = "mean"\n')
    out = tmp_path / "out"
    assert main(["predict", str(cfg), "--out", str(out), "--quiet"]) == 0
    traj = Trajectory.load(out / "trajectory.npz")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["low_rank"]["rank"] == 60 and summary["gossip_samples"] == 4
    exact_cfg = tmp_path / "e.toml"
    exact_cfg.write_text(base + '[prediction]\nf0 = "mean"\n')
    assert main(["predict", str(exact_cfg), "--out", str(tmp_path / "e"), "--quiet"]) == 0
    exact = Trajectory.load(tmp_path / "e" / "trajectory.npz")
    assert np.max(np.abs(exact.test_loss - traj.test_loss)) <= 1e-8


def test_check_with_rank_and_gossip_mirrors_the_exact_check(tmp_path, monkeypatch):
    """``ntkdyn check`` with ``[prediction] rank`` and random gossip: the stability of the
    mean state (E[W]) on the low-rank coordinates -- at full rank the exact check's lr* --
    and the mean over the sampled sequences (the sweep over the first
    ``SWEEP_SEQUENCES``, as the exact check's); with a periodic sequence the one-period
    operator on the low-rank coordinates, at full rank the exact check's verdicts."""
    import sys

    from ntkdyn.preflight import check

    monkeypatch.setattr(sys.modules["ntkdyn.preflight"], "SWEEP_SEQUENCES", 2)

    gossip = ('[topology]\nname = "ring"\ngossip = "edges"\ngossip_p = 0.5\n'
              'gossip_samples = 4\n')
    periodic = '[topology]\nsequence = ["ring", "complete"]\n'
    for topology in (gossip, periodic):
        base = TINY_TOML.replace('[topology]\nname = "ring"\n', topology)
        exact_cfg = tmp_path / "e.toml"
        exact_cfg.write_text(base + '[prediction]\nf0 = "mean"\n')
        exact = check(str(exact_cfg))
        lr_exact = {v.algorithm: v.lr_star for v in exact.stability}
        cfg = tmp_path / "f.toml"
        cfg.write_text(base + '[prediction]\nrank = 60\nf0 = "mean"\n')
        full = check(str(cfg))
        assert full.low_rank["rank"] == 60
        for v, e in zip(full.stability, exact.stability, strict=True):
            assert v.algorithm == e.algorithm and v.inside == e.inside, (v, e)
            assert abs(v.lr_star - lr_exact[v.algorithm]) <= 1e-6 * lr_exact[v.algorithm], v
        # as tests/test_lowrank.py's static check (measured 4.3e-8 relative)
        assert abs(full.prediction["final_test_loss"] - exact.prediction["final_test_loss"]) \
            <= 1e-6 * exact.prediction["final_test_loss"]
        # the sweep over the same sampled sequences (empty before on the low-rank path)
        assert [s["lr"] for s in full.sweep] == pytest.approx([s["lr"] for s in exact.sweep],
                                                              rel=1e-6)
        assert [s["final_test_loss"] for s in full.sweep] == pytest.approx(
            [s["final_test_loss"] for s in exact.sweep], rel=1e-4)
        if topology == gossip:  # 2 of the 4 sequences per rate, all 4 at the chosen rate
            assert {s["sequences"] for s in full.sweep + exact.sweep} == {2}
            assert full.prediction["sequences"] == exact.prediction["sequences"] == 4
            assert full.prediction["final_test_loss"] == pytest.approx(
                exact.prediction["final_test_loss"], rel=1e-6)


@pytest.mark.parametrize("algorithm", ["dgd", "gradient_tracking"])
def test_periodic_stability_on_the_low_rank_coordinates_equals_the_exact_one(algorithm):
    """A periodic sequence (two matchings): at full rank the one-period operator on
    the feature coordinates has the exact path's per-step radius (<= 1e-8) and lr*
    (<= 1e-8 relative): theory/low_rank.md section 6 (the intertwining holds step by
    step, so over a period)."""
    from ntkdyn.dynamics import stability as spectrum
    from ntkdyn.dynamics.problem import make_problem

    _, _, y, _, agent, _, q = _rank_r_problem()
    n = y.shape[0]  # a full-rank kernel, so that the exact radius has no kernel-free modes
    feats = np.random.default_rng(1).normal(size=(n, n))
    kern = feats @ feats.T / n
    process = _process("periodic", q)
    factor = lowrank.factorize(lowrank.kernel_columns(kern), n)
    exact_set = spectrum.max_stable_lr(make_problem(kern, y, agent, process), algorithm)[0]
    low_set = lowrank.lowrank_stable_set(factor, agent, process, algorithm).lr_star
    assert abs(low_set - exact_set) <= 1e-8 * exact_set, (low_set, exact_set)
    # the radii inside and outside the set from the operators themselves; the full reports
    # (each a stable-set search of ~60 radii) for DGD only (the suite's time)
    algo, ones = nd.algorithms.get_algorithm(algorithm), np.ones(q)
    exact_op = spectrum.StepOperator(make_problem(kern, y, agent, process), algo, ones)
    low_op = FeatureStepOperator(lowrank.FeatureProblem(factor, agent, process), algo, ones)
    for frac in (0.5, 0.99, 1.2):
        rho, rho_exact = low_op.spectral_radius(frac * exact_set), \
            exact_op.spectral_radius(frac * exact_set)
        assert (rho_exact <= 1 + 1e-12) == (frac < 1), (frac, rho_exact)
        assert abs(rho - rho_exact) <= 1e-8, (frac, rho, rho_exact)
    if algorithm != "dgd":
        return
    lr = 1.2 * exact_set
    exact = spectrum.stability(make_problem(kern, y, agent, process), algorithm, lr)
    low = lowrank.lowrank_stability(factor, agent, process, algorithm, lr)
    assert low.stable == exact.stable is False
    assert abs(low.spectral_radius - exact.spectral_radius) <= 1e-8, (low, exact)
    assert "per-step rate over a period of 2 steps" in low.operator


def test_nd_predict_cross_entropy_with_random_gossip_at_full_rank(digits_problem):
    """nd.predict(rank=N, loss="cross_entropy") with random gossip (refused before, naming
    ``rank``) equals the exact path's nd.predict (the mean network over the sequences and
    the E[W] run, <= 1e-8: the rank-N analytic factor reproduces the kernel to round-off),
    for both random processes."""
    _, parts, arch = digits_problem
    for kind in ("random_edges", "one_random_edge"):
        kw = dict(lr=0.5, steps=[0, 10, 20], f0="mean", loss="cross_entropy", samples=2)
        exact = nd.predict(arch, parts, _process(kind, 4), **kw)
        low = nd.predict(arch, parts, _process(kind, 4), rank=60, **kw)
        assert isinstance(low, GossipTrajectory) and low.metadata["path"] == "low_rank"
        for f in ("train_loss", "test_loss", "test_acc", "consensus_dist"):
            for a, b in ((getattr(exact, f), getattr(low, f)),
                         (getattr(exact.expected, f), getattr(low.expected, f))):
                assert np.max(np.abs(a - b)) <= 1e-8 * max(1.0, np.abs(a).max()), (kind, f)


def test_nd_predict_cross_entropy_with_a_periodic_sequence_at_full_rank(digits_problem):
    """nd.predict(rank=N, loss="cross_entropy") with a periodic sequence (refused before)
    equals the exact path's nd.predict (mean network, <= 1e-8: the rank-N analytic factor
    reproduces the kernel to round-off), and says which sequence it ran."""
    _, parts, arch = digits_problem
    process = _process("periodic", 4)
    kw = dict(lr=0.5, steps=[0, 10, 20], f0="mean", loss="cross_entropy")
    exact = nd.predict(arch, parts, process, **kw)
    low = nd.predict(arch, parts, process, rank=60, **kw)
    assert low.metadata["path"] == "low_rank"
    assert low.metadata["mixing_process"]["kind"] == "periodic"
    for f in ("train_loss", "test_loss", "test_acc", "consensus_dist"):
        a, b = getattr(exact, f), getattr(low, f)
        assert np.max(np.abs(a - b)) <= 1e-8 * max(1.0, np.abs(a).max()), f


@pytest.mark.parametrize("algorithm", ["dgd", "atc", "gradient_tracking", "p2pl"])
def test_cross_entropy_with_a_periodic_sequence_equals_the_exact_path(algorithm):
    """A periodic sequence (two matchings) with cross-entropy on a kernel of rank r: the
    low-rank path equals the exact path's cross-entropy run on the same sequence
    (<= 1e-10, every recorded quantity; the step's matrices read inside the loop), for
    the mean network and for one random network from the same draws."""
    from ntkdyn.dynamics.random_init import InitDraws
    from ntkdyn.lowrank.cross_entropy import predict_lowrank_ce, predict_random_lowrank_ce

    kern, kern_t, y, yt, agent, r, q = _rank_r_problem()
    process = _process("periodic", q)
    algo = nd.algorithms.p2pl(2, 2) if algorithm == "p2pl" else algorithm
    steps = range(0, 31, 5)
    exact = nd.predict_from_kernels(kern, y, agent, process, 0.8, steps, algo,
                                    kernel_test_train=kern_t, y_test=yt,
                                    loss="cross_entropy")
    factor = lowrank.factorize(lowrank.kernel_columns(kern, kern_t), r)
    low = predict_lowrank_ce(factor, y, agent, process, 0.8, steps, algo, y_test=yt)
    assert low.metadata["mixing_process"]["kind"] == "periodic"
    assert_fields_close(exact, low, FIELDS, 1e-10)
    # one random network (P + 1 groups sharing the sequence): group s is the mean-network
    # run from network s's f_0
    rng = np.random.default_rng(2)
    n, m, k = y.shape[0], yt.shape[0], y.shape[1]
    draws = InitDraws(train=rng.normal(size=(n, 2 * k)), test=rng.normal(size=(m, 2 * k)),
                      seed=0, jitter=0.0, outputs=k)
    rnd = predict_random_lowrank_ce(factor, draws, y, agent, process, 0.8, steps, algo,
                                    y_test=yt)
    one = predict_lowrank_ce(factor, y, agent, process, 0.8, steps, algo, y_test=yt,
                             f0_train=draws.train[:, :k], f0_test=draws.test[:, :k])
    assert np.max(np.abs(rnd.draws["test_loss"][0] - one.test_loss)) <= 1e-10


@pytest.mark.parametrize("algorithm", ["dgd", "atc", "gradient_tracking", "p2pl"])
def test_cross_entropy_with_random_gossip_equals_the_exact_path(algorithm):
    """Random gossip with cross-entropy on a kernel of rank r (refused before): the
    sampled sequences and the E[W] run as column groups, the softmax over each group's
    K columns.  Every sequence, their mean, the quantile bands and ``.expected`` equal the
    exact path's to 1e-10 (every recorded quantity, outputs included), from f0 = 0 and
    from a given f0; ``.expected`` is called the run with E[W], not the expected
    trajectory; a sequence that diverges is flagged alone."""
    from ntkdyn.lowrank.cross_entropy import predict_lowrank_ce

    kern, kern_t, y, yt, agent, r, q = _rank_r_problem(seed=1)
    process = _process("random_edges", q)
    algo = nd.algorithms.p2pl(2, 2) if algorithm == "p2pl" else algorithm
    steps, lr = range(0, 31, 5), [0.8, 0.6, 0.9, 0.7]
    factor = lowrank.factorize(lowrank.kernel_columns(kern, kern_t), r)
    rng = np.random.default_rng(6)
    f0, f0t = 0.5 * rng.normal(size=y.shape), 0.5 * rng.normal(size=yt.shape)
    for given in ({}, {"f0_train": f0, "f0_test": f0t}):
        call = dict(kernel_test_train=kern_t, y_test=yt, loss="cross_entropy",
                    record_outputs=True, samples=3, **given)
        exact = nd.predict_from_kernels(kern, y, agent, process, lr, steps, algo, **call)
        low = predict_lowrank_ce(factor, y, agent, process, lr, steps, algo, y_test=yt,
                                 record_outputs=True, samples=3, **given)
        assert isinstance(low, GossipTrajectory) and low.samples == 3
        assert low.metadata["mixing_process"] == exact.metadata["mixing_process"]
        for traj in (low, exact):
            assert "not the expected trajectory" in traj.metadata["note"]
            assert "'.expected' is the run with E[W] (cross-entropy: not the expected " \
                "trajectory)" in traj.summary()
        _assert_same(exact, low, "mean")
        _assert_same(exact.expected, low.expected, "E[W]")
        for s in range(3):
            _assert_same(exact.sequence(s), low.sequence(s), f"sequence {s}")
        for f, band in exact.quantiles.items():
            assert np.allclose(band, low.quantiles[f], rtol=REL, atol=1e-300), f
        assert np.max(np.abs(low.per_sample["test_loss"][0]
                             - low.per_sample["test_loss"][1])) > 1e-6


def test_cross_entropy_random_gossip_library_entry_points_and_divergence():
    """``lowrank.predict(loss="cross_entropy")`` with random gossip runs (it was refused
    naming ``mixing``), default 64 sequences; ``samples`` with a static W is refused
    naming ``samples``; at a rate where the sequences blow up each is flagged on its own
    (status, ``diverged_at``) as on the exact path."""
    from ntkdyn.lowrank.cross_entropy import predict_lowrank_ce

    kern, kern_t, y, yt, agent, r, q = _rank_r_problem(seed=2)
    process = _process("one_edge", q)
    source = lowrank.kernel_columns(kern, kern_t)
    low = lowrank.predict(source, y, agent, process, 0.5, [0, 5, 10], "atc", rank=r,
                          y_test=yt, loss="cross_entropy", samples=2)
    assert isinstance(low, GossipTrajectory) and low.samples == 2
    assert low.metadata["path"] == "low_rank" and low.metadata["loss"] == "cross_entropy"
    factor = lowrank.factorize(source, r)
    with pytest.raises(ValueError, match="^samples: only for a random mixing sequence"):
        predict_lowrank_ce(factor, y, agent, process.expected(), 0.5, [0, 5], samples=2)
    steps = range(0, 201, 20)
    exact = nd.predict_from_kernels(kern, y, agent, process, 60.0, steps, "dgd",
                                    loss="cross_entropy", samples=2)
    big = predict_lowrank_ce(factor, y, agent, process, 60.0, steps, "dgd", samples=2)
    assert big.status == exact.status
    for s in range(2):
        a, b = exact.sequence(s), big.sequence(s)
        assert (a.status, a.diverged_at, len(a.steps)) == (b.status, b.diverged_at,
                                                          len(b.steps)), s


@pytest.mark.parametrize("algorithm", ["dgd", "atc"])
def test_random_network_with_cross_entropy_and_random_gossip_matches_exact_path(algorithm):
    """One random network, cross-entropy and random gossip (refused before): network s
    from its own draws on sequence s, the f0 = 0 network on the same sequences and E[W]
    (2 P + 1 groups).  With a rank-r kernel, rank r and the same draws, the means over
    networks, their draws and bands and the mean network (a GossipTrajectory) equal the
    exact path's to 1e-10."""
    kern, kern_t, y, yt, agent, r, q = _rank_r_problem(seed=3)
    process = _process("random_edges", q)
    p, k, steps, lr = 3, y.shape[1], range(0, 31, 6), [0.8, 0.6, 0.9, 0.7]
    g = np.random.default_rng(7).normal(size=(len(y) + len(yt), p * k))
    from ntkdyn.dynamics.problem import make_problem
    from ntkdyn.dynamics.random_init import InitDraws
    from ntkdyn.dynamics.run import run_problem

    problem = make_problem(kern, y, agent, process, kernel_test_train=kern_t, y_test=yt,
                           loss="cross_entropy")
    order = np.asarray(problem.order)
    init = InitDraws(train=g[:len(y)][order], test=g[len(y):], seed=0, jitter=0.0, outputs=k)
    exact = run_problem(problem, algorithm, [lr], steps, init=init, samples=p)[0]
    draws = InitDraws(train=g[:len(y)], test=g[len(y):], seed=0, jitter=0.0, outputs=k)
    low = lowrank.predict(lowrank.kernel_columns(kern, kern_t), y, agent, process, lr, steps,
                          algorithm, rank=r, y_test=yt, init=draws, loss="cross_entropy",
                          samples=p)
    _assert_networks(exact, low, algorithm)
    assert isinstance(low.mean_network, GossipTrajectory)
    assert low.metadata["band_over"] == exact.metadata["band_over"]
    assert low.metadata["low_rank"]["f0_draws"]["outputs"] == k


NET_FIELDS = ("train_loss", "local_loss", "objective", "train_acc", "param_dist",
              "consensus_dist", "central_dist", "mean_model_train_loss",
              "mean_model_train_acc", "test_loss", "test_acc", "mean_model_test_loss",
              "mean_model_test_acc")


def _sorted_exact(kern, kern_t, y, yt, agent, mixing, lr, steps, algorithm, g, *,
                  outputs: int = 1, samples=None):
    """The exact path's one random network from the given draws ``g`` ((N + M, P K), the
    caller's order; run_problem takes the training rows in the problem's sorted order)."""
    from ntkdyn.dynamics.problem import make_problem
    from ntkdyn.dynamics.random_init import InitDraws
    from ntkdyn.dynamics.run import run_problem

    n = len(y)
    problem = make_problem(kern, y, agent, mixing, kernel_test_train=kern_t, y_test=yt)
    order = np.asarray(problem.order)
    init = InitDraws(train=g[:n][order], test=g[n:], seed=0, jitter=0.0, outputs=outputs)
    return run_problem(problem, algorithm, [lr], steps, init=init, samples=samples,
                       record_outputs=True)[0]


def _assert_networks(exact, low, where: str, rel: float = REL):
    assert type(low) is type(exact) and low.samples == exact.samples, where
    for f in NET_FIELDS:
        for a, b, what in ((getattr(exact, f), getattr(low, f), "mean over networks"),
                           (getattr(exact.mean_network, f), getattr(low.mean_network, f),
                            "mean network")):
            assert a.shape == b.shape, (where, f, what)
            scale = max(float(np.max(np.abs(a))), 1e-300)
            assert np.max(np.abs(a - b)) <= rel * scale, (where, f, what,
                                                          np.max(np.abs(a - b)) / scale)
    for f, v in exact.draws.items():
        scale = max(float(np.max(np.abs(v))), 1e-300)
        assert np.max(np.abs(v - low.draws[f])) <= rel * scale, (where, "draws", f)
    for f in ("train_loss", "test_loss"):
        scale = float(np.max(np.abs(exact.quantiles[f])))
        assert np.max(np.abs(exact.quantiles[f] - low.quantiles[f])) <= rel * scale, f


@pytest.mark.parametrize("form", ["gram", "features"])
@pytest.mark.parametrize("algorithm", ["dgd", "atc", "gradient_tracking"])
def test_random_network_on_a_periodic_sequence_matches_exact_path(algorithm, form):
    """One random network (f0='random') with a periodic sequence: the K + P shared cyclic
    columns mixed by the sequence's matrices.  With a rank-r kernel, rank r and the same
    draws (given to both paths) every metric of the mean over networks, each network's
    draws, the band and the mean network equal the exact path's to 1e-10 (relative)."""
    kern, kern_t, y, yt, agent, r, q = _rank_r_problem(seed=3)
    proc = _process("periodic", q)
    p, steps, lr = 5, range(0, 31, 6), [0.4, 0.3, 0.5, 0.35]
    g = np.random.default_rng(4).normal(size=(len(y) + len(yt), p))
    exact = _sorted_exact(kern, kern_t, y, yt, agent, proc, lr, steps, algorithm, g)
    from ntkdyn.dynamics.random_init import InitDraws

    draws = InitDraws(train=g[:len(y)], test=g[len(y):], seed=0, jitter=0.0)
    low = lowrank.predict(lowrank.kernel_columns(kern, kern_t), y, agent, proc, lr, steps,
                          algorithm, rank=r, y_test=yt, init=draws, record_outputs=True,
                          form=form)
    _assert_networks(exact, low, algorithm)
    assert low.metadata["mixing_process"] == exact.metadata["mixing_process"]
    assert low.metadata["path"] == "low_rank" and low.metadata["f0"] == "random"
    for f in ("train_outputs", "test_outputs"):
        a, b = getattr(exact.mean_network, f), getattr(low.mean_network, f)
        assert np.max(np.abs(a - b)) <= REL * np.max(np.abs(a)), f
    # the sequence matters: the same draws under the period's average W differ
    avg = lowrank.predict(lowrank.kernel_columns(kern, kern_t), y, agent,
                          proc.expected(), lr, steps, algorithm, rank=r, y_test=yt,
                          init=draws)
    assert np.max(np.abs(avg.consensus_dist - low.consensus_dist)) > 1e-6


def test_random_network_on_a_periodic_sequence_from_low_rank_nngp_draws():
    """With the draws of a rank-r NNGP factor (lowrank.predict(nngp=...), drawn by
    networks.nngp_draws, not the exact path's Cholesky draws): sampled network s equals a
    low-rank run of the same periodic sequence from f0 = its draws (output k: draw column
    (s + k) mod P), train and test losses and accuracies, to 1e-10 (relative)."""
    from ntkdyn.dynamics.solver import network_columns
    from ntkdyn.lowrank import networks

    kern, kern_t, y, yt, agent, r, q = _rank_r_problem(seed=4)
    rng = np.random.default_rng(5)
    feats = rng.normal(size=(len(y) + len(yt), r))
    nngp = lowrank.kernel_columns(feats @ feats.T / r)
    proc = _process("periodic", q)
    p, steps, lr, k = 4, range(0, 25, 8), 0.4, y.shape[1]
    low = lowrank.predict(lowrank.kernel_columns(kern, kern_t), y, agent, proc, lr, steps,
                          "atc", rank=r, y_test=yt, nngp=nngp, samples=p, seed=2)
    draws = low.metadata["low_rank"]["f0_draws"]
    assert draws["nngp_rank"] == r and draws["relative_residual"] <= 1e-10
    g, _ = networks.nngp_draws(nngp, len(y), p, 2, rank=r)
    factor = lowrank.factorize(lowrank.kernel_columns(kern, kern_t), r)
    cols = network_columns(k, p)
    for s in range(p):
        one = predict_lowrank_process(factor, y, agent, proc, lr, steps, "atc", y_test=yt,
                                      f0_train=g.train[:, cols[s]],
                                      f0_test=g.test[:, cols[s]])
        for f in ("train_loss", "test_loss", "train_acc", "test_acc"):
            a, b = getattr(one, f), low.draws[f][s]
            assert np.max(np.abs(a - b)) <= REL * max(np.max(np.abs(a)), 1.0), (s, f)
    mean = predict_lowrank_process(factor, y, agent, proc, lr, steps, "atc", y_test=yt)
    assert np.max(np.abs(mean.test_loss - low.mean_network.test_loss)) <= \
        REL * np.max(mean.test_loss)


def test_nd_predict_random_network_on_a_periodic_sequence(digits_problem):
    """nd.predict(rank=N) with a periodic sequence and the default f0 (one random network):
    a RandomNetworkTrajectory whose mean network equals the exact path's (1e-8, the analytic
    factor exact to round-off) and whose expected test loss is within the Monte-Carlo
    error of the exact path's (different draws, same law)."""
    data, parts, arch = digits_problem
    proc = _process("periodic", 4)
    call = dict(lr=0.4, algorithm="atc", steps=range(0, 41, 20), samples=64)
    low = nd.predict(arch, parts, proc, rank=data.num_train, **call)
    exact = nd.predict(arch, parts, proc, kernel_dtype="float64", **call)
    assert type(low) is type(exact) and low.metadata["f0"] == "random"
    assert low.metadata["path"] == "low_rank" and low.samples == 64
    assert low.metadata["mixing_process"] == exact.metadata["mixing_process"]
    assert np.max(np.abs(exact.mean_network.test_loss - low.mean_network.test_loss)) <= 1e-8
    se = np.std(low.draws["test_loss"][:, -1], axis=0) * np.sqrt(4 / 64)  # sqrt(K / P)
    assert np.all(np.abs(low.test_loss[-1] - exact.test_loss[-1]) <= 4 * se + 1e-9)


@pytest.mark.parametrize("form", ["gram", "features"])
@pytest.mark.parametrize(("kind", "algorithm"), [("random_edges", "dgd"), ("one_edge", "atc"),
                                                 ("random_edges", "gradient_tracking")])
def test_random_network_on_random_gossip_matches_exact_path(kind, algorithm, form):
    """One random network with random gossip: P independent networks (K draw columns
    each), network s on sampled sequence s, the mean network on the same sequences and
    the E[W] runs from every f0 -- 3 P + 1 groups.  With a rank-r kernel, rank r and the
    same draws every metric of the mean over networks, each network's draws, the band,
    the mean network (over the sequences, and its E[W] run) and the init-only band's run
    equal the exact path's to 1e-10 (relative)."""
    kern, kern_t, y, yt, agent, r, q = _rank_r_problem(seed=6)
    proc = _process(kind, q)
    p, k, steps, lr = 3, y.shape[1], range(0, 31, 6), [0.4, 0.3, 0.5, 0.35]
    g = np.random.default_rng(7).normal(size=(len(y) + len(yt), p * k))
    exact = _sorted_exact(kern, kern_t, y, yt, agent, proc, lr, steps, algorithm, g,
                          outputs=k, samples=p)
    from ntkdyn.dynamics.random_init import InitDraws

    draws = InitDraws(train=g[:len(y)], test=g[len(y):], seed=0, jitter=0.0, outputs=k)
    low = lowrank.predict(lowrank.kernel_columns(kern, kern_t), y, agent, proc, lr, steps,
                          algorithm, rank=r, y_test=yt, init=draws, form=form)
    _assert_networks(exact, low, algorithm)
    assert isinstance(low.mean_network, GossipTrajectory)
    _assert_same_fields(exact.mean_network.expected, low.mean_network.expected, "E[W]")
    for s in range(p):
        _assert_same_fields(exact.mean_network.sequence(s), low.mean_network.sequence(s),
                            f"mean network, sequence {s}")
    _assert_networks(exact.init_band_run, low.init_band_run, "init band run")
    for key in ("band_over", "band", "init_band", "f0"):
        assert low.metadata[key] == exact.metadata[key], key
    assert low.metadata["mixing_process"] == exact.metadata["mixing_process"]
    assert low.metadata["path"] == "low_rank"
    # the networks really run different sequences (network 0 vs its E[W] run differ)
    assert np.max(np.abs(low.draws["test_loss"][0] - low.init_band_run.draws["test_loss"][0])) \
        > 1e-6


def _assert_same_fields(exact, low, where: str):
    for f in NET_FIELDS:
        a, b = getattr(exact, f), getattr(low, f)
        scale = max(float(np.max(np.abs(a))), 1e-300)
        assert a.shape == b.shape and np.max(np.abs(a - b)) <= REL * scale, (where, f)


def test_nd_predict_random_network_on_random_gossip(digits_problem):
    """nd.predict(rank=N) with random gossip and the default f0 (one random network): as on
    the exact path, samples networks on as many sampled sequences; the mean network (f0 = 0,
    the same sequences) equals the exact path's (1e-8), the expected test loss is within
    the Monte-Carlo error of the exact path's (different draws, same law)."""
    data, parts, arch = digits_problem
    proc = _process("random_edges", 4)
    call = dict(lr=0.4, algorithm="atc", steps=range(0, 41, 20), samples=8)
    low = nd.predict(arch, parts, proc, rank=data.num_train, **call)
    exact = nd.predict(arch, parts, proc, kernel_dtype="float64", **call)
    assert type(low) is type(exact) and low.samples == exact.samples == 8
    assert low.metadata["band_over"] == exact.metadata["band_over"] == "init+mixing"
    assert low.metadata["path"] == "low_rank" and low.metadata["f0"] == "random"
    assert isinstance(low.mean_network, GossipTrajectory) and low.mean_network.samples == 8
    for f in ("test_loss", "param_dist", "consensus_dist"):
        a, b = getattr(exact.mean_network, f), getattr(low.mean_network, f)
        assert np.max(np.abs(a - b)) <= 1e-8, f
    a, b = exact.mean_network.expected.test_loss, low.mean_network.expected.test_loss
    assert np.max(np.abs(a - b)) <= 1e-8
    se = np.std(low.draws["test_loss"][:, -1], axis=0) / np.sqrt(8)
    assert np.all(np.abs(low.test_loss[-1] - exact.test_loss[-1]) <= 4 * se + 1e-9)
    assert low.init_band_run is not None and low.init_band_run.samples == 8


def test_check_with_rank_gossip_and_one_random_network(tmp_path):
    """``ntkdyn check`` with ``[prediction] rank``, random gossip and the default f0: the
    one-random-network summary runs the independent networks on the low-rank path."""
    from ntkdyn.preflight import check

    gossip = ('[topology]\nname = "ring"\ngossip = "edges"\ngossip_p = 0.5\n'
              'gossip_samples = 3\n')
    cfg = tmp_path / "r.toml"
    cfg.write_text(TINY_TOML.replace('[topology]\nname = "ring"\n', gossip)
                   + '[prediction]\nrank = 60\n')
    rep = check(str(cfg))
    one = rep.prediction["one_random_network"]
    assert one["samples"] == 3 and one["status"] == "ok"
    assert one["final_test_loss_expected"] > rep.prediction["final_test_loss"]


def test_random_network_on_random_gossip_from_low_rank_nngp_draws():
    """With the draws of a rank-r NNGP factor (lowrank.predict(nngp=...), P K columns drawn
    by networks.nngp_draws): network s equals sequence s of a low-rank run of the same
    process from f0 = network s's K draw columns, and its E[W] run that run's expected
    group, to 1e-10 (relative)."""
    from ntkdyn.lowrank import networks

    kern, kern_t, y, yt, agent, r, q = _rank_r_problem(seed=8)
    rng = np.random.default_rng(9)
    feats = rng.normal(size=(len(y) + len(yt), r))
    nngp = lowrank.kernel_columns(feats @ feats.T / r)
    proc = _process("random_edges", q)
    p, k, steps, lr = 3, y.shape[1], range(0, 25, 8), 0.4
    low = lowrank.predict(lowrank.kernel_columns(kern, kern_t), y, agent, proc, lr, steps,
                          "dgd", rank=r, y_test=yt, nngp=nngp, samples=p, seed=1)
    assert low.samples == p and low.metadata["low_rank"]["f0_draws"]["nngp_rank"] == r
    g, _ = networks.nngp_draws(nngp, len(y), p * k, 1, rank=r)
    factor = lowrank.factorize(lowrank.kernel_columns(kern, kern_t), r)
    for s in range(p):
        one = predict_lowrank_process(factor, y, agent, proc, lr, steps, "dgd", y_test=yt,
                                      samples=p, f0_train=g.train[:, s * k:(s + 1) * k],
                                      f0_test=g.test[:, s * k:(s + 1) * k])
        for f in ("train_loss", "test_loss", "train_acc", "test_acc"):
            for a, b in ((one.sequence(s), low.draws[f][s]),
                         (one.expected, low.init_band_run.draws[f][s])):
                a = getattr(a, f)
                assert np.max(np.abs(a - b)) <= REL * max(np.max(np.abs(a)), 1.0), (s, f)


def test_divergence_is_flagged_per_sequence_as_on_the_exact_path():
    """Random gossip between the mean-state lr* (E[W]) and local GD's: some sampled
    sequences diverge.  Each group has its own flag (as on the exact path): the ``E[W]``
    recursion goes on after the first sequence diverged (one flag for all the groups
    stopped it there; measured: sequences from step 182, E[W] from 198; exact 162 and
    189), and every record both paths have agrees to 1e-10 at full rank.
    The first divergent step differs between the paths (their divergence limits are
    different norms: kernel coefficients against feature coordinates)."""
    from ntkdyn.dynamics import stability as spectrum
    from ntkdyn.dynamics.problem import make_problem

    rng = np.random.default_rng(0)
    n, k, q = 8, 2, 2
    feats = rng.normal(size=(n, n))
    kern = feats @ feats.T / n
    y, agent = np.eye(k)[rng.integers(0, k, n)], np.arange(n) % q
    proc = nd.graphs.random_edges(nd.graphs.topology("complete", q), 0.3, seed=1)
    problem = make_problem(kern, y, agent, proc.expected())
    lr_ew = spectrum.max_stable_lr(problem, "dgd")[0]
    lr_gd = spectrum.max_stable_lr(problem, "gd")[0]
    lr, steps = lr_ew + 0.9 * (lr_gd - lr_ew), list(range(0, 401, 4))
    exact = nd.predict_from_kernels(kern, y, agent, proc, lr, steps, samples=16)
    low = lowrank.predict(lowrank.kernel_columns(kern), y, agent, proc, lr, steps, rank=n,
                          samples=16)
    for traj in (exact, low):
        assert traj.status == traj.expected.status == "diverged"
        assert traj.expected.diverged_at > traj.diverged_at  # E[W] went on
        assert len(traj.expected.steps) > len(traj.steps)
    for a, b in ((exact, low), (exact.expected, low.expected)):
        m = min(len(a.steps), len(b.steps))
        for f in ("train_loss", "param_dist", "consensus_dist"):
            x, z = getattr(a, f)[:m], getattr(b, f)[:m]
            assert np.max(np.abs(x - z)) <= REL * np.max(np.abs(x)), f


@pytest.mark.parametrize("form", ["gram", "features"])
@pytest.mark.parametrize("kind", ["periodic", "random_edges"])
def test_process_sweep_in_one_pass_equals_one_run_per_rate(kind, form):
    """``predict_lowrank_process_sweep``: ``G`` mixing groups x ``R`` rates in one state.
    Each rate equals its own ``predict_lowrank_process`` (mean over the sequences, every
    sequence, ``E[W]``, bands) to round-off, per-agent rates included; a rate above the
    mean state's ``lr*`` diverges on its own (its status and step are its own run's) while
    the others go on; ``accuracies="final"`` fills the last record only."""
    kern, kern_t, y, yt, agent, r, q = _rank_r_problem(seed=2)
    proc = _process(kind, q)
    samples = None if kind == "periodic" else 3
    steps = range(0, 41, 8)
    factor = lowrank.factorize(lowrank.kernel_columns(kern, kern_t), r)
    lrs = [0.3, [0.4, 0.3, 0.5, 0.35], 40.0]
    sweep = lowrank.gossip.predict_lowrank_process_sweep(
        factor, y, agent, proc, lrs, steps, "atc", samples=samples, y_test=yt, form=form)
    assert len(sweep) == 3
    for lr, got in zip(lrs, sweep, strict=True):
        one = predict_lowrank_process(factor, y, agent, proc, lr, steps, "atc", y_test=yt,
                                      samples=samples, form=form)
        assert type(got) is type(one) and got.status == one.status
        assert got.diverged_at == one.diverged_at and np.array_equal(got.steps, one.steps)
        assert got.metadata == one.metadata
        if one.status == "diverged":
            continue
        _assert_same(one, got, f"lr {lr}")
        if kind == "random_edges":
            _assert_same(one.expected, got.expected, f"lr {lr} E[W]")
            for s in range(3):
                _assert_same(one.sequence(s), got.sequence(s), f"lr {lr} sequence {s}")
    assert [t.status for t in sweep] == ["ok", "ok", "diverged"]
    final = lowrank.gossip.predict_lowrank_process_sweep(
        factor, y, agent, proc, lrs[:2], steps, "atc", samples=samples, y_test=yt,
        form=form, accuracies="final")
    for a, b in zip(sweep[:2], final, strict=True):
        assert np.isnan(b.test_acc[0]).all() and np.isnan(b.train_acc[:-1]).all()
        assert np.allclose(a.test_acc[-1], b.test_acc[-1], rtol=0, atol=1e-12)
        assert np.allclose(a.train_acc[-1], b.train_acc[-1], rtol=0, atol=1e-12)
        assert np.allclose(a.test_loss, b.test_loss, rtol=REL, atol=0)


def test_process_sweep_errors_name_the_field():
    kern, kern_t, y, yt, agent, r, q = _rank_r_problem()
    factor = lowrank.factorize(lowrank.kernel_columns(kern, kern_t), r)
    sweep = lowrank.gossip.predict_lowrank_process_sweep
    w = nd.graphs.mixing(nd.graphs.topology("ring", q))
    with pytest.raises(ValueError, match="mixing: expected a mixing process"):
        sweep(factor, y, agent, w, [0.1], [0, 4])
    with pytest.raises(ValueError, match="lrs: expected a non-empty"):
        sweep(factor, y, agent, _process("random_edges", q), [], [0, 4])
    with pytest.raises(ValueError, match="accuracies: expected"):
        sweep(factor, y, agent, _process("random_edges", q), [0.1], [0, 4], accuracies="x")
    with pytest.raises(ValueError, match="samples: only for a random"):
        sweep(factor, y, agent, _process("periodic", q), [0.1], [0, 4], samples=2)


def test_process_sweep_runs_blocks_of_rates_that_fit(monkeypatch):
    """Blocks of rates (given, or as many as fit under ``NTKDYN_MEMORY_LIMIT``) give the
    same trajectories as one pass; ``sweep_rate_block`` shrinks with the limit."""
    from ntkdyn.lowrank.gossip import predict_lowrank_process_sweep, sweep_rate_block

    kern, kern_t, y, yt, agent, r, q = _rank_r_problem(seed=3)
    factor = lowrank.factorize(lowrank.kernel_columns(kern, kern_t), r)
    proc, lrs, steps = _process("one_edge", q), [0.1, 0.2, 0.3, 0.4, 0.5], range(0, 21, 5)
    one = predict_lowrank_process_sweep(factor, y, agent, proc, lrs, steps, y_test=yt,
                                        samples=2)
    blocks = predict_lowrank_process_sweep(factor, y, agent, proc, lrs, steps, y_test=yt,
                                           samples=2, rate_block=2)
    for a, b in zip(one, blocks, strict=True):
        _assert_same(a, b, "blocks of 2")
    kw = dict(records=5)
    assert sweep_rate_block(48, 16, r, q, 9, 5, **kw) == 5
    from ntkdyn.lowrank.evolve import evolve_bytes

    rows = max(48, (q + 1) * r) * r * 8
    two = evolve_bytes(48, 16, r, q, 2 * 9, padded_rows=0, **kw) + rows
    monkeypatch.setenv("NTKDYN_MEMORY_LIMIT", str(two))
    assert sweep_rate_block(48, 16, r, q, 9, 5, **kw) == 2
    monkeypatch.setenv("NTKDYN_MEMORY_LIMIT", "1")
    assert sweep_rate_block(48, 16, r, q, 9, 5, **kw) == 1  # one rate; refused later
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="rate_block: expected a positive integer"):
            predict_lowrank_process_sweep(factor, y, agent, proc, lrs, steps, rate_block=bad)


@pytest.mark.parametrize("algorithm", ["dgd", "atc"])
def test_cross_entropy_sweep_with_random_gossip_equals_one_run_per_rate(algorithm):
    """``predict_lowrank_ce_sweep`` with random gossip (refused before, naming ``mixing``):
    the sampled sequences and ``E[W]`` times the rates as column groups.  Each rate equals
    its own ``predict_lowrank_ce(..., samples=3)`` (mean, every sequence, ``E[W]``, bands)
    to 1e-10, per-agent rates included (statuses and divergence steps equal: with the
    softmax's bounded gradient a large rate grows the state linearly, below the divergence
    limit, so no rate here diverges; the squared-loss test covers a diverging group);
    blocks of one rate give the same; ``samples`` with a static ``W`` is refused naming
    ``samples``."""
    from ntkdyn.lowrank.cross_entropy import predict_lowrank_ce, predict_lowrank_ce_sweep

    kern, kern_t, y, yt, agent, r, q = _rank_r_problem(seed=4)
    process = _process("random_edges", q)
    factor = lowrank.factorize(lowrank.kernel_columns(kern, kern_t), r)
    steps, lrs = range(0, 31, 5), [0.5, [0.8, 0.6, 0.9, 0.7], 3.0]
    sweep = predict_lowrank_ce_sweep(factor, y, agent, process, lrs, steps, algorithm,
                                     y_test=yt, samples=3)
    blocks = predict_lowrank_ce_sweep(factor, y, agent, process, lrs, steps, algorithm,
                                      y_test=yt, samples=3, rate_block=1)
    for lr, got, blk in zip(lrs, sweep, blocks, strict=True):
        one = predict_lowrank_ce(factor, y, agent, process, lr, steps, algorithm, y_test=yt,
                                 samples=3)
        assert isinstance(got, GossipTrajectory) and got.samples == 3
        assert got.metadata == one.metadata
        for s in range(3):
            a, b = one.sequence(s), got.sequence(s)
            assert (a.status, a.diverged_at, len(a.steps)) == (b.status, b.diverged_at,
                                                              len(b.steps)), (lr, s)
        for traj in (got, blk):
            _assert_same(one, traj, f"lr {lr}")
            _assert_same(one.expected, traj.expected, f"lr {lr} E[W]")
            for s in range(3):
                _assert_same(one.sequence(s), traj.sequence(s), f"lr {lr} sequence {s}")
            for f, band in one.quantiles.items():
                assert np.allclose(band, traj.quantiles[f], rtol=REL, atol=1e-300), f
    assert [t.status for t in sweep] == ["ok", "ok", "ok"]
    with pytest.raises(ValueError, match="^samples: only for a random mixing sequence"):
        predict_lowrank_ce_sweep(factor, y, agent, process.expected(), [0.5], steps,
                                 samples=2)
    with pytest.raises(ValueError, match="rate_block: expected a positive integer"):
        predict_lowrank_ce_sweep(factor, y, agent, process, [0.5], steps, rate_block=0)


def test_mix_groups_over_the_support_equals_the_einsum():
    """The low-rank combine with the support of the draws (a ring of 12 agents: D = 3 < Q)
    sums over each agent's neighbours; equal to the einsum over all agents to 1e-14; one
    matrix for every column (G = 1) and no support keep their forms."""
    import jax.numpy as jnp
    import networkx as nx

    from ntkdyn import graphs
    from ntkdyn.graphs.sequences import supported_sampler
    from ntkdyn.lowrank.gossip import mix_groups

    process = graphs.random_edges(nx.cycle_graph(12), 0.5, seed=3)
    sampler = supported_sampler(process)
    arrays = process.device_arrays()
    g, r, k = 4, 5, 3
    w = jnp.stack([sampler(arrays, jnp.asarray(e), process.key(e)) for e in range(g)])
    x = jnp.asarray(np.random.default_rng(1).normal(size=(12, r, g * k)))
    full = np.einsum("gpq,qrgc->prgc", np.asarray(w), np.asarray(x).reshape(12, r, g, k))
    for nbrs in (sampler.neighbours, None):
        out = np.asarray(mix_groups(w, x, nbrs)).reshape(12, r, g, k)
        assert np.max(np.abs(out - full)) <= 1e-14 * np.max(np.abs(full))
    assert max(map(len, sampler.neighbours)) == 3
