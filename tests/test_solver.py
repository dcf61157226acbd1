"""Kernel-space solver against brute-force training of the linearised network."""

from pathlib import Path

import numpy as np
import pytest
from conftest import brute_force, make_linearised_net, rel_err

import ntkdyn as nd
from ntkdyn import graphs
from ntkdyn.prediction import predict_from_kernels, sweep_from_kernels

TOL = 1e-8  # the bound; observed agreement is ~1e-14


def _predict(net, w, lr, algorithm, steps, **kw):
    return predict_from_kernels(
        net.kernel_full, net.y, net.agent, w, lr, range(steps + 1), algorithm=algorithm,
        f0_train=net.f0, kernel_test_train=net.kernel_test_full, y_test=net.y_test,
        f0_test=net.f0_test, record_outputs=True, **kw)


@pytest.mark.parametrize("algorithm", ["dgd", "atc", "cta"])
@pytest.mark.parametrize("topology", ["ring", "star"])
def test_kernel_space_equals_parameter_space(net, algorithm, topology):
    w = graphs.mixing(graphs.topology(topology, 4), "metropolis")
    steps, lr = 25, 0.3
    ref = brute_force(net, w, lr, algorithm, steps)
    traj = _predict(net, w, lr, algorithm, steps)
    assert traj.status == "ok"
    assert rel_err(traj.train_outputs, ref["out"]) < TOL
    assert rel_err(traj.test_outputs, ref["out_test"]) < TOL
    assert rel_err(traj.train_loss, ref["train_loss"]) < TOL
    assert rel_err(traj.test_loss, ref["test_loss"]) < TOL
    assert rel_err(traj.param_dist, ref["param"]) < TOL
    assert rel_err(traj.consensus_dist, ref["cons"]) < TOL
    assert rel_err(traj.central_dist, ref["central"]) < TOL
    ref_acc = (ref["out"].argmax(-1) == net.y.argmax(-1)).mean(-1)
    np.testing.assert_array_equal(traj.train_acc, ref_acc)


def test_per_agent_learning_rates(net):
    w = graphs.mixing(graphs.topology("ring", 4), "metropolis")
    lr = np.array([0.1, 0.4, 0.25, 0.3])
    ref = brute_force(net, w, lr, "dgd", 20)
    traj = _predict(net, w, lr, "dgd", 20)
    assert rel_err(traj.train_outputs, ref["out"]) < TOL
    assert rel_err(traj.central_dist, ref["central"]) < TOL


def test_traced_kernel_equals_full_kernel_with_identity_blocks(net):
    """A traced kernel Theta_s stands for Theta_s (x) I_K: both layouts agree."""
    rng = np.random.default_rng(3)
    n, k = net.y.shape
    a = rng.normal(size=(n, 2 * n))
    ks = a @ a.T / n
    kts = rng.normal(size=(net.y_test.shape[0], 2 * n)) @ a.T / n
    w = graphs.mixing(graphs.topology("ring", 4))
    common = dict(f0_train=net.f0, y_test=net.y_test, f0_test=net.f0_test, record_outputs=True)
    t1 = predict_from_kernels(ks, net.y, net.agent, w, 0.5, range(0, 31, 3), "atc",
                              kernel_test_train=kts, **common)
    t2 = predict_from_kernels(np.kron(ks, np.eye(k)), net.y, net.agent, w, 0.5,
                              range(0, 31, 3), "atc", kernel_test_train=np.kron(kts, np.eye(k)),
                              **common)
    for name in ("train_outputs", "test_outputs", "param_dist", "consensus_dist", "objective"):
        assert rel_err(getattr(t1, name), getattr(t2, name)) < 1e-12, name


def test_recorded_steps_subset_matches_every_step(net):
    w = graphs.mixing(graphs.topology("ring", 4))
    every = _predict(net, w, 0.3, "dgd", 40)
    some = predict_from_kernels(net.kernel_full, net.y, net.agent, w, 0.3, [0, 7, 7, 19, 40],
                                f0_train=net.f0, record_outputs=True)
    assert rel_err(some.train_outputs, every.train_outputs[[0, 7, 7, 19, 40]]) < 1e-13


def test_sweep_equals_separate_predictions(net):
    w = graphs.mixing(graphs.topology("ring", 4))
    lrs = [0.05, 0.2, np.array([0.1, 0.2, 0.3, 0.4])]
    sweep = sweep_from_kernels(net.kernel_full, net.y, net.agent, w, lrs, range(0, 51, 5),
                               "cta", f0_train=net.f0, kernel_test_train=net.kernel_test_full,
                               y_test=net.y_test, f0_test=net.f0_test)
    for lr, traj in zip(lrs, sweep, strict=True):
        one = predict_from_kernels(net.kernel_full, net.y, net.agent, w, lr, range(0, 51, 5),
                                   "cta", f0_train=net.f0, kernel_test_train=net.kernel_test_full,
                                   y_test=net.y_test, f0_test=net.f0_test)
        assert rel_err(traj.test_loss, one.test_loss) < 1e-13
        assert rel_err(traj.consensus_dist, one.consensus_dist) < 1e-10


def test_single_agent_is_centralised_gradient_descent(net):
    """Q = 1: every algorithm is GD on the linearised model, r_t = (I - eta Theta/N)^t r_0."""
    n, k = net.y.shape
    kern = net.kernel_full
    lr, steps = 0.4, 30
    evals, evecs = np.linalg.eigh(kern)
    r0 = (net.f0 - net.y).ravel()
    for algorithm in ("dgd", "atc", "cta"):
        traj = predict_from_kernels(kern, net.y, np.zeros(n, int), np.ones((1, 1)), lr,
                                    range(steps + 1), algorithm, f0_train=net.f0,
                                    record_outputs=True)
        closed = np.stack([net.y.ravel() + evecs @ ((1 - lr * evals / n) ** t * (evecs.T @ r0))
                           for t in range(steps + 1)]).reshape(steps + 1, n, k)
        assert rel_err(traj.train_outputs[:, 0], closed) < 1e-10
        assert rel_err(traj.train_loss[:, 0], traj.central_train_loss) < 1e-12


def test_atc_on_complete_graph_is_centralised(net):
    """W = 11^T/Q, common start: ATC is exactly centralised GD; CTA's average follows it."""
    q = 4
    w = np.full((q, q), 1 / q)
    atc = _predict(net, w, 0.3, "atc", 30)
    ref = brute_force(net, w, 0.3, "atc", 30)
    for qq in range(q):
        assert rel_err(atc.train_outputs[:, qq], ref["central_out"]) < 1e-10
    assert np.max(atc.central_dist) < 1e-10 * max(np.max(atc.param_dist), 1)
    cta = _predict(net, w, 0.3, "cta", 30)
    assert rel_err(cta.train_outputs.mean(axis=1), ref["central_out"]) < 1e-10
    assert rel_err(cta.mean_model_train_loss, cta.central_train_loss) < 1e-10


def test_divergent_run_is_reported_not_nan(net):
    w = graphs.mixing(graphs.topology("ring", 4))
    traj = _predict(net, w, 50.0, "dgd", 300)
    assert traj.status == "diverged" and traj.diverged
    assert traj.diverged_at is not None and 0 < traj.diverged_at <= 300
    assert len(traj.steps) <= traj.diverged_at
    assert np.all(traj.steps < traj.diverged_at)
    for name in ("train_loss", "test_loss", "param_dist", "consensus_dist", "train_outputs"):
        assert np.all(np.isfinite(getattr(traj, name))), name
    assert "diverged at step" in traj.summary()


def test_save_load_roundtrip(net, tmp_path):
    w = graphs.mixing(graphs.topology("ring", 4))
    traj = _predict(net, w, 0.3, "dgd", 10)
    path = traj.save(tmp_path / "traj.npz")
    back = nd.Trajectory.load(path)
    np.testing.assert_array_equal(back.test_loss, traj.test_loss)
    np.testing.assert_array_equal(back.train_outputs, traj.train_outputs)
    assert back.metadata["algorithm"] == "dgd"
    assert back.metadata["versions"]["jax"]
    assert back.status == "ok" and not list(tmp_path.glob("*.partial*"))


def test_unsorted_agents_give_outputs_in_caller_order():
    net = make_linearised_net(seed=5)
    w = graphs.mixing(graphs.topology("path", 4))
    perm = np.random.default_rng(0).permutation(len(net.agent))
    rows = (perm[:, None] * 3 + np.arange(3)).ravel()
    t1 = _predict(net, w, 0.2, "dgd", 8)
    t2 = predict_from_kernels(net.kernel_full[np.ix_(rows, rows)], net.y[perm], net.agent[perm],
                              w, 0.2, range(9), "dgd", f0_train=net.f0[perm],
                              record_outputs=True)
    assert rel_err(t2.train_outputs, t1.train_outputs[:, :, perm]) < 1e-12


def test_without_reference_agents_are_unchanged(net):
    w = graphs.mixing(graphs.topology("ring", 4))
    full = _predict(net, w, 0.3, "atc", 15)
    lean = _predict(net, w, 0.3, "atc", 15, reference=False)
    for name in ("train_outputs", "test_loss", "param_dist", "consensus_dist", "objective"):
        assert rel_err(getattr(lean, name), getattr(full, name)) < 1e-13, name
    assert lean.central_dist is None and lean.central_train_loss is None
    assert full.central_dist is not None
    assert "centralised" not in lean.summary()


def test_float32_kernel_stays_close_to_float64(net):
    """kernel_dtype='float32': products in float32, state in float64 (README states ~1e-6)."""
    w = graphs.mixing(graphs.topology("ring", 4))
    f64 = _predict(net, w, 0.3, "dgd", 30)
    f32 = _predict(net, w, 0.3, "dgd", 30, kernel_dtype="float32")
    assert rel_err(f32.train_outputs, f64.train_outputs) < 1e-5
    assert rel_err(f32.param_dist, f64.param_dist) < 1e-5
    assert 0 < rel_err(f32.train_loss, f64.train_loss) < 1e-5  # not silently float64
    assert f32.metadata["kernel_dtype"] == "float32"


def test_import_ntkdyn_defers_heavy_modules():
    """``import ntkdyn`` loads jax and numpy only; scipy.stats, matplotlib, sklearn, networkx,
    scipy.optimize and tqdm load when a command needs them (fresh interpreter)."""
    import subprocess
    import sys

    heavy = ("scipy.stats", "matplotlib", "sklearn", "networkx", "scipy.optimize", "tqdm")
    code = ("import sys, ntkdyn; print(' '.join(m for m in sys.modules if m.split('.')[0] in "
            f"{heavy!r} or m in {heavy!r}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert not [m for m in out if m in heavy or m.startswith(("scipy.stats", "scipy.optimize"))]
    # the public names still resolve (lazily); no public function shares its name with a
    # module, so importing the defining modules cannot rebind nd.predict / nd.check
    import ntkdyn.prediction  # noqa: F401
    import ntkdyn.preflight  # noqa: F401
    assert callable(nd.predict) and callable(nd.check)
    root = Path(nd.__file__).parent
    for name in nd.__all__:
        if callable(getattr(nd, name)) and not isinstance(getattr(nd, name), type):
            assert not (root / f"{name}.py").exists() and not (root / name).is_dir(), name
    assert nd.predict.__module__ == "ntkdyn.prediction"
    assert nd.check.__module__ == "ntkdyn.preflight"
    for name in nd.__all__:
        assert getattr(nd, name) is not None


def test_binomial_pmf_matches_scipy():
    import scipy.stats

    from ntkdyn.graphs.sequences import _binom_pmf

    for n in range(12):
        for p in (0.0, 0.3, 0.5, 1.0):
            np.testing.assert_allclose(_binom_pmf(n, p),
                                       scipy.stats.binom.pmf(np.arange(n + 1), n, p),
                                       rtol=1e-13, atol=1e-300)


def _reference_problems(net):
    """Full kernel (equal shards), traced kernel with unequal shards (per-block products)."""
    w = graphs.mixing(graphs.topology("ring", 4))
    full = nd.make_problem(net.kernel_full, net.y, net.agent, w, f0_train=net.f0,
                           kernel_test_train=net.kernel_test_full, y_test=net.y_test,
                           f0_test=net.f0_test)
    rng = np.random.default_rng(1)
    n = 22
    a = rng.normal(size=(n, 2 * n))
    agent = np.repeat(np.arange(4), [4, 6, 5, 7])
    y = np.eye(3)[rng.integers(0, 3, n)]
    traced = nd.make_problem(a @ a.T / n, y, agent, w, f0_train=0.1 * rng.normal(size=(n, 3)),
                             kernel_test_train=rng.normal(size=(5, 2 * n)) @ a.T / n,
                             y_test=np.eye(3)[rng.integers(0, 3, 5)], f0_test=np.zeros((5, 3)))
    return {"full": full, "traced_unequal": traced}


@pytest.mark.parametrize("algorithm", [
    "dgd", "atc", "cta", "gd", "momentum", "gradient_tracking", "diging", "extra",
    nd.algorithms.p2pl(3, 2), "flow"])
def test_eigenbasis_reference_equals_carried_reference(net, algorithm):
    """The centralised reference run diagonally in the eigenbasis of D^1/2 Theta D^1/2 gives
    every recorded quantity of the carried reference to 1e-10 (relative)."""
    from ntkdyn.dynamics import solver

    continuous = algorithm == "flow"
    algo = nd.algorithms.get_algorithm("dgd" if continuous else algorithm)
    for name, problem in _reference_problems(net).items():
        lrs = np.array([[0.3, 0.2, 0.25, 0.35], [0.05, 0.05, 0.05, 0.05]])
        steps = np.array([0, 1, 2, 5, 13, 40]) if not continuous else np.array([0.0, 0.7, 6.5])
        kw = dict(continuous=continuous, record_outputs=True)
        eig = solver.evolve(problem, algo, lrs, steps, reference="eigen", **kw)
        car = solver.evolve(problem, algo, lrs, steps, reference="carried", **kw)
        assert set(eig) == set(car)
        assert "central_dist" in eig
        for key in car:
            assert eig[key].shape == car[key].shape, (name, key)
            assert rel_err(eig[key], car[key]) <= 1e-10, (name, key, rel_err(eig[key], car[key]))


def test_eigenbasis_reference_with_random_gossip(net):
    from ntkdyn.dynamics import solver

    problem = nd.make_problem(net.kernel_full, net.y, net.agent,
                              graphs.random_edges(graphs.topology("ring", 4), p=0.5, seed=3),
                              f0_train=net.f0)
    kw = dict(samples=2, record_outputs=True)
    eig = solver.evolve(problem, nd.algorithms.get_algorithm("atc"), np.full((1, 4), 0.3),
                        np.arange(0, 31, 5), reference="eigen", **kw)
    car = solver.evolve(problem, nd.algorithms.get_algorithm("atc"), np.full((1, 4), 0.3),
                        np.arange(0, 31, 5), reference="carried", **kw)
    for key in car:
        assert rel_err(eig[key], car[key]) <= 1e-10, key


def test_reference_argument_is_checked(net):
    from ntkdyn.dynamics import solver

    problem = _reference_problems(net)["full"]
    with pytest.raises(ValueError, match="reference: expected"):
        solver.evolve(problem, nd.algorithms.get_algorithm("dgd"), np.full((1, 4), 0.3),
                      np.arange(3), reference="dense")


def test_divergence_checked_in_blocks_equals_checked_every_step(net, monkeypatch):
    """Checking the bound once per CHECK_BLOCK steps (replaying a block that ends outside it)
    gives the same records, flags and diverged_at as a check after every step."""
    from ntkdyn.dynamics import solver

    problem = _reference_problems(net)["full"]
    lrs = np.array([[0.3] * 4, [8.0] * 4, [50.0] * 4, [2.0] * 4])  # some rates diverge
    steps = np.array([0, 3, 17, 40, 41, 90, 200])
    algo = nd.algorithms.get_algorithm("dgd")
    runs = []
    for block in (16, 1):
        monkeypatch.setattr(solver, "CHECK_BLOCK", block)
        solver._run_chunk.clear_cache()
        runs.append(solver.evolve(problem, algo, lrs, steps))
    solver._run_chunk.clear_cache()
    blocked, every = runs
    assert np.all(every["diverged_at"][1:3] > 0) and every["diverged_at"][0] == -1
    np.testing.assert_array_equal(blocked["diverged_at"], every["diverged_at"])
    for key in every:
        np.testing.assert_array_equal(blocked[key], every[key], err_msg=key)


# --------------------------------------------------------------------------- carried outputs
def _carried_problems(mixing=None):
    """Small problems with equal shards: traced (squared loss and cross-entropy), full."""
    rng = np.random.default_rng(4)
    n, k, q, m = 24, 3, 4, 7
    feats = rng.normal(size=(n + m, 6))
    kern = feats @ feats.T / 6 + 0.3 * np.eye(n + m)
    y = np.eye(k)[rng.integers(0, k, n)]
    yt = np.eye(k)[rng.integers(0, k, m)]
    agent = np.arange(n) % q
    w = graphs.mixing(graphs.topology("ring", q)) if mixing is None else mixing
    common = dict(f0_train=0.1 * rng.normal(size=(n, k)), kernel_test_train=kern[n:, :n],
                  y_test=yt, f0_test=np.zeros((m, k)))
    full = np.kron(kern[:n, :n], np.eye(k)) + 0.01 * np.kron(np.ones((n, n)), np.ones((k, k)))
    return {
        "mse": nd.make_problem(kern[:n, :n], y, agent, w, **common),
        "cross_entropy": nd.make_problem(kern[:n, :n], y, agent, w, loss="cross_entropy",
                                         **common),
        "full": nd.make_problem(full, y, agent, w, f0_train=common["f0_train"],
                                kernel_test_train=np.kron(kern[n:, :n], np.eye(k)), y_test=yt,
                                f0_test=common["f0_test"]),
    }


def _assert_same_records(a, b, tol, what):
    assert set(a) == set(b), what
    for key in a:
        assert a[key].shape == b[key].shape, (what, key)
        if a[key].dtype.kind == "f":
            err = rel_err(a[key], b[key])
            assert err <= tol, (what, key, err)
        else:
            np.testing.assert_array_equal(a[key], b[key], err_msg=str((what, key)))


@pytest.mark.parametrize("algorithm", [
    "dgd", "atc", "cta", "gd", "momentum", "gradient_tracking", "diging", "extra",
    nd.algorithms.p2pl(3, 2)])
def test_carried_outputs_equal_recomputed_outputs(net, algorithm):
    """The lifted state [alpha; Theta alpha] (solver._grad_lifted, _grad_blocks_lifted) gives
    every record of the plain state to 1e-12 (relative, float64), two rates, one of them
    diverging (same flags and diverged_at): every schedule on the squared loss with the
    eigenbasis reference; DGD, gradient tracking and P2PL (one schedule with memory, one
    with phases) also with the carried reference, cross-entropy, a full kernel and
    unequal shards."""
    from ntkdyn.dynamics import solver

    algo = nd.algorithms.get_algorithm(algorithm)
    lrs = np.array([[0.3, 0.2, 0.25, 0.35], [40.0] * 4])
    steps = np.array([0, 1, 2, 5, 13, 40])
    problems = dict(_carried_problems(), unequal=_reference_problems(net)["traced_unequal"])
    every = algo.name in ("dgd", "gradient_tracking", "p2pl")
    for name, problem in problems.items():
        refs = ("carried",) if name == "cross_entropy" else ("eigen", "carried")
        for ref in refs if every else refs[:1] if name == "mse" else ():
            kw = dict(reference=ref, record_outputs=True)
            plain = solver.evolve(problem, algo, lrs, steps, carry_outputs=False, **kw)
            lifted = solver.evolve(problem, algo, lrs, steps, carry_outputs=True, **kw)
            if name != "cross_entropy":  # the cross-entropy gradient stays bounded
                assert plain["diverged_at"][1] > 0 and plain["diverged_at"][0] == -1
            _assert_same_records(plain, lifted, 1e-12, (name, ref))


def test_carried_outputs_with_mixing_sequences_and_minibatches(net):
    """Periodic and random mixing, mini-batch SGD (sampled batch sequences and the expected
    group), with and without a centralised reference: the same records to 1e-12."""
    from ntkdyn.dynamics import solver

    base = _carried_problems()["mse"]
    ring, star = graphs.topology("ring", 4), graphs.topology("star", 4)
    periodic = graphs.sequences.periodic([graphs.mixing(ring), graphs.mixing(star)])
    cases = {
        "periodic": (_carried_problems(periodic)["mse"], {}),
        "random": (_carried_problems(graphs.random_edges(ring, p=0.5, seed=2))["mse"],
                   dict(samples=3)),
        "minibatch": (base, dict(samples=3, batch_size=2, seed=5)),
        "minibatch_ce": (_carried_problems()["cross_entropy"],
                         dict(samples=2, batch_size=3, seed=1)),
        "minibatch_unequal": (_reference_problems(net)["traced_unequal"],
                              dict(samples=2, batch_size=2, seed=3)),
    }
    algo = nd.algorithms.get_algorithm("atc")
    for name, (problem, kw) in cases.items():
        for central in (True, False) if name == "random" else (True,):
            runs = [solver.evolve(problem, algo, np.full((1, 4), 0.3), np.arange(0, 41, 4),
                                  central=central, carry_outputs=c, **kw) for c in (False, True)]
            _assert_same_records(*runs, 1e-12, (name, central))


def test_carried_outputs_choice_and_errors(net):
    """Auto: carried where records times slots outweigh the steps' extra passes; True where
    it does not apply (the flow) is a ValueError naming carry_outputs."""
    from ntkdyn.dynamics import solver

    problem = _carried_problems()["mse"]  # R = 24 rows, Q = 4
    # records R A = 120 per record against Q^2 + LIFT_PASSES A = 1,696 per step
    assert solver.carries_outputs(problem, 1000, 70)
    assert not solver.carries_outputs(problem, 1000, 71)
    assert not solver.carries_outputs(problem, 1000, 70, continuous=True)
    assert solver.carries_outputs(problem, 2, 1000, choice=True)
    algo = nd.algorithms.get_algorithm("dgd")
    with pytest.raises(ValueError, match="carry_outputs"):
        solver.evolve(problem, algo, np.full((1, 4), 0.3), np.array([0.0, 1.5]),
                      continuous=True, carry_outputs=True)


def test_carried_outputs_with_float32_kernels_stay_close_to_float64():
    """float32 kernels: the carried outputs accumulate float32-rounded increments
    ``Theta g`` in float64 instead of rounding ``Theta alpha`` at every product; both stay
    within the float32 tolerance of the float64 trajectory (measured: 1.2e-7 plain, 8.2e-7
    carried on this problem; 1.7e-5 and 9e-7 on N = 2,048, README), and both are float32
    (not silently float64)."""
    from ntkdyn.dynamics import solver
    from ntkdyn.kernels import analytic_ntk

    rng = np.random.default_rng(0)
    n, q, k = 256, 8, 3
    x = rng.normal(size=(n, 30))
    x *= np.sqrt(30) / np.linalg.norm(x, axis=1, keepdims=True)
    problem = nd.make_problem(np.asarray(analytic_ntk(x, hidden_layers=2)),
                              np.eye(k)[rng.integers(0, k, n)], np.arange(n) % q,
                              graphs.mixing(graphs.topology("ring", q)))
    algo = nd.algorithms.get_algorithm("dgd")
    steps = np.arange(0, 801, 100)
    exact = solver.evolve(problem, algo, np.full((1, q), 0.5), steps)
    for carried in (False, True):
        f32 = solver.evolve(problem, algo, np.full((1, q), 0.5), steps, kernel_dtype="float32",
                            carry_outputs=carried)
        for key in ("train_loss", "param_dist", "consensus_dist"):
            assert 0 < rel_err(f32[key], exact[key]) < 1e-5, (carried, key)


@pytest.mark.parametrize("kernel_dtype", ["float64", "mixed"])
def test_carried_outputs_with_sampled_random_networks(monkeypatch, kernel_dtype):
    """One random network (sampled initial outputs as response columns, records of each
    network, ``kernel_dtype="mixed"``: the responses through float32 blocks): the carried
    state gives the plain state's records (1e-12 in float64; mixed: 1e-6, the float32
    products' rounding, which the two states accumulate differently)."""
    from ntkdyn.dynamics import random_init, solver
    from ntkdyn.dynamics.run import run_problem

    problem = _carried_problems()["mse"]
    rng = np.random.default_rng(7)
    feats = rng.normal(size=(31, 8))
    init = random_init.draw(feats @ feats.T / 8, 24, samples=5, seed=3)
    real = solver.carries_outputs
    runs = []
    for flag in (False, True):
        monkeypatch.setattr(solver, "carries_outputs",
                            lambda *a, choice=None, f=flag, **kw: real(*a, choice=f, **kw))
        runs.append(run_problem(problem, "atc", [0.3], np.arange(0, 31, 3), init=init,
                                kernel_dtype=kernel_dtype)[0])
    plain, carried = runs
    tol = 1e-12 if kernel_dtype == "float64" else 1e-6
    for key in ("train_loss", "test_loss", "param_dist", "consensus_dist", "train_acc"):
        assert rel_err(getattr(carried, key), getattr(plain, key)) <= tol, key
        assert rel_err(getattr(carried.mean_network, key),
                       getattr(plain.mean_network, key)) <= tol, key


# --------------------------------------------------------------------------- sparse combine
def test_sparse_mixing_holds_the_matrix():
    """``sparse_mixing``: each row's nonzeros (padded with weight 0), the centralised slot
    kept (weight 1 on itself); None when a row has more than a quarter of Q nonzeros."""
    from ntkdyn.dynamics import solver

    q = 40
    w = graphs.mixing(graphs.topology("erdos_renyi", q, p=0.1, seed=1), rule="metropolis")
    nbr, wts = solver.sparse_mixing(w)
    assert nbr.shape == wts.shape == (q + 1, int((w != 0).sum(axis=1).max()))
    back = np.zeros((q + 1, q + 1))
    for i in range(q + 1):
        np.add.at(back[i], nbr[i], wts[i])
    np.testing.assert_array_equal(back[:q, :q], w)
    assert back[q, q] == 1.0 and back[q, :q].sum() == 0 and back[:q, q].sum() == 0
    assert solver.sparse_mixing(graphs.mixing(graphs.topology("complete", q))) is None
    assert solver.sparse_mixing(graphs.mixing(graphs.topology("ring", 8))) is None  # 3 > 2


@pytest.mark.parametrize("algorithm", ["dgd", "atc", "cta", "gradient_tracking", "extra",
                                       nd.algorithms.p2pl(2, 3)])
def test_sparse_combine_equals_dense_product(monkeypatch, algorithm):
    """A ring of 16 (3 nonzeros per row) is combined as a sum over neighbours: every record
    equals the dense product's to 1e-13, with and without the centralised slot, with the
    plain and the carried-outputs state."""
    from ntkdyn.dynamics import solver

    rng = np.random.default_rng(0)
    q, n, k = 16, 64, 3
    feats = rng.normal(size=(n + 8, 6))
    kern = feats @ feats.T / 6 + 0.3 * np.eye(n + 8)
    problem = nd.make_problem(kern[:n, :n], np.eye(k)[rng.integers(0, k, n)],
                              np.arange(n) % q, graphs.mixing(graphs.topology("ring", q)),
                              kernel_test_train=kern[n:, :n],
                              y_test=np.eye(k)[rng.integers(0, k, 8)])
    assert "mixing_sparse" in solver.device_data(problem, np.full((1, q), 0.3))
    algo = nd.algorithms.get_algorithm(algorithm)
    for central, carried in ((True, False), (False, False), (True, True)):
        kw = dict(central=central, carry_outputs=carried)
        sparse = solver.evolve(problem, algo, np.full((1, q), 0.3), np.arange(0, 41, 5), **kw)
        with monkeypatch.context() as m:
            m.setattr(solver, "_sparse_entry", lambda problem: {})
            dense = solver.evolve(problem, algo, np.full((1, q), 0.3), np.arange(0, 41, 5),
                                  **kw)
        _assert_same_records(sparse, dense, 1e-13, (central, carried))


@pytest.mark.parametrize("q", [3, 16, 17])
def test_mixing_per_column_group_both_forms(q):
    """The combine with one matrix per column group (time-varying and random mixing):
    ``x_p <- sum_q W[g]_pq x_q`` on group ``g``'s columns, as a sum of broadcast products
    (``Q <= UNROLLED_MIX_MAX``) or one einsum (above), equal to an explicit loop over the
    groups to 1e-14 relative; the centralised slot is left unchanged."""
    import jax.numpy as jnp

    from ntkdyn.dynamics import solver

    assert solver.UNROLLED_MIX_MAX == 16
    rng = np.random.default_rng(q)
    g, r, k = 3, 5, 2
    w = rng.random((g, q, q))
    x = rng.normal(size=(q + 1, r, g * k))
    out = np.asarray(solver._mix(lambda j: jnp.asarray(w), jnp.asarray(x), q_count=q,
                                 central=True))
    ref = x.copy()
    for grp in range(g):
        cols = slice(grp * k, (grp + 1) * k)
        ref[:q, :, cols] = np.einsum("pq,qrc->prc", w[grp], x[:q, :, cols])
    assert np.max(np.abs(out - ref)) <= 1e-14 * np.max(np.abs(ref))


@pytest.mark.parametrize("kind", ["ring8", "ring24", "periodic", "one_edge", "complete"])
def test_mixing_per_column_group_over_the_support(kind):
    """With the support every draw shares (:class:`solver.SupportedSampler`: the nonzeros of
    ``E[W]`` and the diagonal), the per-group combine sums over each row's neighbours only;
    it equals the explicit loop over the groups to 1e-14 relative on draws of the process
    itself (ring of 8 and of 24 agents, a periodic sequence whose matrices differ in
    support, one random edge), and a complete graph (``D = Q``) keeps the full sum."""
    import jax
    import jax.numpy as jnp
    import networkx as nx

    from ntkdyn import graphs
    from ntkdyn.dynamics import solver

    if kind == "periodic":
        mats = [graphs.mixing(graphs.topology(n, 6)) for n in ("ring", "star", "path")]
        process = graphs.periodic(mats)
    else:
        q = {"ring8": 8, "ring24": 24}.get(kind, 6)
        graph = nx.complete_graph(q) if kind == "complete" else nx.cycle_graph(q)
        process = (graphs.one_random_edge(graph, seed=1) if kind == "one_edge"
                   else graphs.random_edges(graph, 0.5, seed=1))
    sampler = solver.supported_sampler(process)
    q, g, r, k = process.num_agents, 5, 4, 3
    assert all(p in nb for p, nb in enumerate(sampler.neighbours))
    assert max(map(len, sampler.neighbours)) == (q if kind == "complete" else
                                                 6 if kind == "periodic" else 3)
    arrays = process.device_arrays()
    w = np.stack([np.asarray(sampler(arrays, jnp.asarray(e), process.key(e % 2)))
                  for e in range(g)])
    outside = np.ones((q, q), bool)
    for p, nb in enumerate(sampler.neighbours):
        outside[p, list(nb)] = False
    assert np.all(w[:, outside] == 0) and np.count_nonzero(w) > 0
    x = np.random.default_rng(0).normal(size=(q + 1, r, g * k))

    def at(j):
        return jnp.asarray(w)

    at.neighbours = sampler.neighbours
    out = np.asarray(jax.jit(lambda x: solver._mix(at, x, q_count=q, central=True))(x))
    ref = x.copy()
    for grp in range(g):
        cols = slice(grp * k, (grp + 1) * k)
        ref[:q, :, cols] = np.einsum("pq,qrc->prc", w[grp], x[:q, :, cols])
    assert np.max(np.abs(out - ref)) <= 1e-14 * np.max(np.abs(ref))


@pytest.mark.parametrize("algorithm", ["dgd", "p2pl", "gradient_tracking"])
@pytest.mark.parametrize("kind", ["mse", "cross_entropy", "full"])
def test_train_records_final_equals_all_at_the_horizon(algorithm, kind):
    """``train_records="final"`` (``ntkdyn check``'s sweep): the training-set records are
    ``NaN`` before the last record and equal to ``"all"``'s there (1e-12), every test
    record is ``"all"``'s (1e-12), over two rates; a multi-phase schedule (P2PL) too."""
    from ntkdyn.dynamics.run import run_problem

    problem = _carried_problems()[kind]
    steps = [0, 3, 10, 16]
    train_keys = ("train_loss", "objective", "local_loss", "train_acc", "param_dist",
                  "consensus_dist", "central_dist", "mean_model_train_loss",
                  "mean_model_train_acc", "central_train_loss", "central_objective",
                  "central_train_acc", "central_param_dist", "train_outputs")
    kw = dict(record_outputs=True)
    every = run_problem(problem, algorithm, [0.05, 0.2], steps, **kw)
    final = run_problem(problem, algorithm, [0.05, 0.2], steps, train_records="final", **kw)
    for a, b in zip(every, final, strict=True):
        assert a.status == b.status == "ok"
        seen = 0
        for name in train_keys:
            va, vb = getattr(a, name), getattr(b, name)
            if va is None:
                assert vb is None, name
                continue
            seen += 1
            assert np.all(np.isnan(vb[:-1])), name
            assert rel_err(vb[-1], va[-1]) <= 1e-12, name
        assert seen >= 9
        for name in ("test_loss", "test_acc", "mean_model_test_loss", "central_test_loss"):
            assert rel_err(getattr(b, name), getattr(a, name)) <= 1e-12, name


def test_train_records_final_is_checked_and_keeps_a_divergence(net):
    """A bad ``train_records`` is a ``ValueError`` naming it; a diverging rate keeps its
    status and divergence step with the training records of the horizon."""
    from ntkdyn.dynamics.run import run_problem

    w = graphs.mixing(graphs.topology("ring", 4))
    problem = nd.make_problem(net.kernel_full, net.y, net.agent, w, f0_train=net.f0,
                              kernel_test_train=net.kernel_test_full, y_test=net.y_test,
                              f0_test=net.f0_test)
    with pytest.raises(ValueError, match="train_records"):
        run_problem(problem, "dgd", [0.1], [0, 5], train_records="last")
    every = run_problem(problem, "dgd", [0.1, 50.0], range(0, 301, 20))
    final = run_problem(problem, "dgd", [0.1, 50.0], range(0, 301, 20), train_records="final")
    assert [t.status for t in final] == [t.status for t in every] == ["ok", "diverged"]
    assert final[1].diverged_at == every[1].diverged_at
    np.testing.assert_array_equal(final[1].steps, every[1].steps)
    assert rel_err(final[1].test_loss, every[1].test_loss) <= 1e-12
    assert rel_err(final[0].train_loss[-1], every[0].train_loss[-1]) <= 1e-12
