"""Outputs over random initialisations (``ntkdyn.initialisation``, issue 14).

References: neural-tangents 0.6.5 ``gradient_descent_mse_ensemble`` (golden data,
``tests/data/make_nt_golden_dynamics.py``), Monte-Carlo over sampled ``f_0`` fed
through ``predict_from_kernels``, and ``predict_from_kernels`` from ``f_0 = 0``.
"""

from pathlib import Path

import numpy as np
import pytest
from conftest import rel_err

from ntkdyn import graphs
from ntkdyn.initialisation import expected_squared_loss, output_distribution
from ntkdyn.kernels.analytic import analytic_kernels
from ntkdyn.prediction import predict_from_kernels

GOLDEN = Path(__file__).parent / "data" / "nt_golden_dynamics.npz"


@pytest.fixture(scope="module")
def golden():
    # Deliberately not a skip: the reference data is part of the repository.
    assert GOLDEN.exists(), f"missing {GOLDEN}; run tests/data/make_nt_golden_dynamics.py"
    with np.load(GOLDEN) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def problem(golden):
    """The golden problem with ntkdyn's own analytic kernels (pooled train + test)."""
    x = np.concatenate([golden["inputs/x_train"], golden["inputs/x_test"]])
    w_std, b_std, depth = golden["kernels/settings"]
    nngp, ntk = analytic_kernels(x, hidden_layers=int(depth), W_std=w_std, b_std=b_std)
    n = golden["inputs/x_train"].shape[0]
    return {"nngp": nngp, "ntk": ntk, "n": n,
            "y": golden["inputs/y_train"], "y_test": golden["inputs/y_test"]}


def _kernels(problem, get):
    n = problem["n"]
    k = problem[get]
    return k[:n, :n], k[n:, :n]


@pytest.mark.parametrize("get", ["ntk", "nngp"])
def test_single_agent_flow_matches_neural_tangents_ensemble(golden, problem, get):
    """Q = 1 gradient flow = NT's ensemble: mean and covariance, train and test, <= 1e-6.

    NT's loss is normalised by ``y_train.size = N K``: ntkdyn's ``eta = lr_nt / K``,
    same times. ``get="nngp"`` trains with the NNGP (readout only)."""
    k_train, k_test_train = _kernels(problem, get)
    y = problem["y"]
    eta = float(golden["ensemble/learning_rate"]) / y.shape[1]
    t = golden["ensemble/t"]
    dist = output_distribution(k_train, y, np.zeros(len(y), int), np.ones((1, 1)), eta, t,
                               "gd", nngp=problem["nngp"], kernel_test_train=k_test_train,
                               continuous=True)
    prefix = f"ensemble/{get}"
    errors = {
        "train_mean": rel_err(dist.train_mean[:, 0], golden[f"{prefix}/train_mean"]),
        "test_mean": rel_err(dist.test_mean[:, 0], golden[f"{prefix}/test_mean"]),
        "train_cov": rel_err(dist.train_cov[:, 0], golden[f"{prefix}/train_cov"]),
        "test_cov": rel_err(dist.test_cov[:, 0], golden[f"{prefix}/test_cov"]),
    }
    assert max(errors.values()) <= 1e-6, errors
    # not vacuous: the covariance moves a lot over the recorded times
    assert rel_err(dist.test_cov[-1, 0], dist.test_cov[0, 0]) > 0.3


def test_single_agent_small_steps_approach_the_flow(golden, problem):
    """Discrete GD with step eta/s for s t steps tends to the flow like 1/s."""
    k_train, k_test_train = _kernels(problem, "ntk")
    y = problem["y"]
    eta = float(golden["ensemble/learning_rate"]) / y.shape[1]
    t = 20
    kw = {"nngp": problem["nngp"], "kernel_test_train": k_test_train}
    one = (np.zeros(len(y), int), np.ones((1, 1)))
    flow = output_distribution(k_train, y, *one, eta, [t], "gd", continuous=True, **kw)
    errs = []
    for s in (10, 20):
        disc = output_distribution(k_train, y, *one, eta / s, [t * s], "gd", **kw)
        errs.append(rel_err(disc.test_cov, flow.test_cov))
    assert errs[1] < 2e-2
    assert 1.8 < errs[0] / errs[1] < 2.2, errs


def _ring_problem(problem):
    k_train, k_test_train = _kernels(problem, "ntk")
    return k_train, k_test_train, np.arange(problem["n"]) % 4, graphs.mixing(
        graphs.topology("ring", 4))


@pytest.mark.parametrize("algorithm", ["dgd", "atc"])
def test_expected_loss_equals_mean_over_sampled_initialisations(problem, algorithm):
    """Exact E[loss] vs the mean of S = 2000 sampled-f_0 predictions (predict_from_kernels).

    The draws are stacked as extra output columns (traced kernels act per column).
    Tolerance: 4 standard errors of the Monte-Carlo mean, per agent and step."""
    k_train, k_test_train, agent, w = _ring_problem(problem)
    y, y_test, nngp, n = problem["y"], problem["y_test"], problem["nngp"], problem["n"]
    lr, steps, s = 0.15, [0, 5, 60], 2000  # stable for both (DGD's lr* is 0.196)
    dist = output_distribution(k_train, y, agent, w, lr, steps, algorithm, nngp=nngp,
                               kernel_test_train=k_test_train, y_test=y_test)
    assert np.all(dist.expected_train_loss[-1] < 0.5 * dist.expected_train_loss[0])

    k_out = y.shape[1]
    rng = np.random.default_rng(7)
    f0 = np.linalg.cholesky(nngp + 1e-12 * np.eye(len(nngp))) @ rng.standard_normal(
        (len(nngp), s * k_out))
    traj = predict_from_kernels(k_train, np.tile(y, s), agent, w, lr, steps, algorithm,
                                f0_train=f0[:n], kernel_test_train=k_test_train,
                                y_test=np.tile(y_test, s), f0_test=f0[n:],
                                record_outputs=True, reference=False)
    for outputs, target, exact, mean_net in (
        (traj.train_outputs, y, dist.expected_train_loss, dist.mean_network_train_loss),
        (traj.test_outputs, y_test, dist.expected_test_loss, dist.mean_network_test_loss),
    ):
        per_draw = outputs.reshape(*outputs.shape[:3], s, k_out)  # (T, Q, N, S, K)
        losses = 0.5 * np.sum((per_draw - target[:, None, :]) ** 2, axis=(2, 4)) / len(target)
        mc, se = losses.mean(-1), losses.std(-1, ddof=1) / np.sqrt(s)
        assert np.all(np.abs(mc - exact) <= 4 * se), np.max(np.abs(mc - exact) / se)
        # not vacuous: the variance term is many standard errors wide
        assert np.all(exact - mean_net > 10 * se)
        # the sample covariance of one output column approaches the exact one
        centred = per_draw - per_draw.mean(axis=3, keepdims=True)
        cov_mc = np.einsum("tqisk,tqjsk->tqij", centred, centred) / (s * k_out - 1)
        m = len(target)
        cov = dist.train_cov if m == n else dist.test_cov
        assert rel_err(cov_mc, cov) < 6 / np.sqrt(s * k_out)


@pytest.mark.parametrize("continuous", [False, True])
@pytest.mark.parametrize("algorithm", ["dgd", "atc", "cta", "gd"])
def test_mean_is_the_prediction_from_zero_outputs(problem, algorithm, continuous):
    """Q = 4 ring: the mean outputs and the mean network's losses are
    ``predict_from_kernels`` with f_0 = 0, to 1e-10."""
    k_train, k_test_train, agent, w = _ring_problem(problem)
    y, y_test = problem["y"], problem["y_test"]
    lr = np.array([0.15, 0.12, 0.15, 0.1])  # stable for every algorithm
    steps = [0.0, 0.5, 4.0, 30.0] if continuous else [0, 1, 4, 30]
    dist = output_distribution(k_train, y, agent, w, lr, steps, algorithm, nngp=problem["nngp"],
                               kernel_test_train=k_test_train, y_test=y_test,
                               continuous=continuous)
    traj = predict_from_kernels(k_train, y, agent, w, lr, steps, algorithm,
                                kernel_test_train=k_test_train, y_test=y_test,
                                continuous=continuous, record_outputs=True, reference=False)
    assert rel_err(dist.train_mean, traj.train_outputs) < 1e-10
    assert rel_err(dist.test_mean, traj.test_outputs) < 1e-10
    assert rel_err(dist.mean_network_train_loss, traj.train_loss) < 1e-10
    assert rel_err(dist.mean_network_test_loss, traj.test_loss) < 1e-10
    # one random network is worse on average than the mean network, by the variance term
    gap = dist.expected_test_loss - dist.mean_network_test_loss
    trace = np.trace(dist.test_cov, axis1=-2, axis2=-1)
    np.testing.assert_allclose(gap, 0.5 * y.shape[1] * trace / len(y_test), rtol=1e-12)
    assert np.all(gap > 0.1)
    assert np.all(dist.expected_train_loss[-1] < dist.expected_train_loss[0])  # stable


def test_step_zero_is_the_prior(problem):
    k_train, k_test_train, agent, w = _ring_problem(problem)
    dist = output_distribution(k_train, problem["y"], agent, w, 0.3, [0], nngp=problem["nngp"],
                               kernel_test_train=k_test_train)
    assert np.all(dist.train_mean == 0) and np.all(dist.test_mean == 0)
    for q in range(4):
        assert rel_err(dist.cov[0, q], problem["nngp"]) < 1e-14


def test_expected_squared_loss_formula():
    rng = np.random.default_rng(0)
    mean, y = rng.normal(size=(5, 2)), rng.normal(size=(5, 2))
    a = rng.normal(size=(5, 5))
    cov = a @ a.T
    draws = mean + np.linalg.cholesky(cov) @ rng.normal(size=(4000, 5, 2))
    mc = (0.5 * np.sum((draws - y) ** 2, axis=(1, 2)) / 5)
    exact = expected_squared_loss(mean, cov, y)
    assert abs(mc.mean() - exact) < 4 * mc.std() / np.sqrt(len(mc))
    with pytest.raises(ValueError, match="cov"):
        expected_squared_loss(mean, cov[:4, :4], y)


@pytest.mark.parametrize("change, match", [
    ({"algorithm": "extra"}, "algorithm"),
    ({"lr": -1.0}, "lr"),
    ({"lr": [0.1, 0.2]}, "lr"),
    ({"nngp": np.eye(5)}, "nngp"),
    ({"agent": np.array([0, 1, 1, 1])}, "agent"),
    ({"agent": np.array([0, 1, 3, 1])}, "agent"),
    ({"steps": [1.5]}, "steps"),
    ({"steps": -1}, "steps"),
    ({"y_train": np.ones((3, 2))}, "y_train"),
    ({"kernel_train": np.ones((4, 3))}, "kernel_train"),
])
def test_invalid_inputs_name_the_argument(change, match):
    args = {"kernel_train": np.eye(4), "y_train": np.ones((4, 2)),
            "agent": np.array([0, 1, 2, 0]), "mixing": np.full((3, 3), 1 / 3), "lr": 0.1,
            "steps": 3, "algorithm": "dgd", "nngp": np.eye(4)}
    args.update(change)
    with pytest.raises(ValueError, match=match):
        output_distribution(**args)


def test_an_nngp_that_is_not_a_covariance_is_refused():
    """nngp = -I gave expected squared losses of -0.5; now a ValueError naming nngp and its
    smallest eigenvalue (a covariance is positive semi-definite)."""
    x = np.random.default_rng(0).standard_normal((6, 3))
    y = np.eye(2)[np.arange(6) % 2]
    args = (x @ x.T, y, np.arange(6) % 2, np.full((2, 2), 0.5), 0.1, 2)
    with pytest.raises(ValueError, match=r"^nngp: expected a positive semi-definite covariance"
                                         r".*smallest eigenvalue -1 "):
        output_distribution(*args, nngp=-np.eye(6))
    ok = output_distribution(*args, nngp=np.eye(6))
    assert np.all(ok.expected_train_loss >= 0)
