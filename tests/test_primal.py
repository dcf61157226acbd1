"""The primal path (issue 17 item 3): the linearised network in parameter space equals the
kernel-space path with the full empirical kernel, on a network with fewer parameters than
samples."""

import numpy as np
import pytest
from conftest import assert_fields_close

import ntkdyn as nd
from ntkdyn._utils import memory
from ntkdyn.kernels.empirical import mlp_empirical_ntk
from ntkdyn.lowrank import jacobian_features, predict_primal

FIELDS = ("train_loss", "local_loss", "objective", "train_acc", "param_dist", "consensus_dist",
          "central_dist", "central_train_loss", "central_param_dist", "mean_model_train_loss",
          "mean_model_train_acc", "test_loss", "test_acc", "mean_model_test_loss",
          "train_outputs", "test_outputs")


@pytest.fixture(scope="module")
def small_mlp():
    rng = np.random.default_rng(0)
    n, m, d, k, q = 200, 40, 5, 3, 4
    x, xt = rng.normal(size=(n, d)), rng.normal(size=(m, d))
    y, yt = np.eye(k)[rng.integers(0, k, n)], np.eye(k)[rng.integers(0, k, m)]
    arch = nd.models.MLP(hidden=(6,), out=k)
    params = nd.models.init_params(arch, d, 0)
    agent = rng.choice(q, size=n, p=[0.4, 0.2, 0.2, 0.2])  # unequal shards
    w = nd.graphs.mixing(nd.graphs.topology("ring", q))
    return arch, params, x, xt, y, yt, agent, w


def test_jacobian_features_give_the_empirical_kernel(small_mlp):
    arch, params, x, xt, *_ = small_mlp
    jac = jacobian_features(arch.apply, params, x, batch_size=64)  # 200 = 3 x 64 + 8: padding
    n, k, p = jac.shape
    assert (n, k, p) == (200, 3, 5 * 6 + 6 + 6 * 3 + 3) and p < n
    full = mlp_empirical_ntk(arch, params, x, traced=False)
    flat = jac.reshape(n * k, p)
    assert np.max(np.abs(flat @ flat.T - full)) <= 1e-12 * np.abs(full).max()


@pytest.mark.parametrize("algorithm", ["dgd", "atc", "cta"])
def test_primal_equals_kernel_path(small_mlp, algorithm):
    """P = 57 < N = 200: every recorded quantity within 1e-10 (measured <= 9e-15)."""
    arch, params, x, xt, y, yt, agent, w = small_mlp
    kern = mlp_empirical_ntk(arch, params, x, traced=False)
    kern_t = mlp_empirical_ntk(arch, params, xt, x, traced=False)
    f0, f0t = np.asarray(arch.apply(params, x)), np.asarray(arch.apply(params, xt))
    lr = [0.3, 0.4, 0.35, 0.25]
    steps = range(0, 61, 10)
    exact = nd.predict_from_kernels(kern, y, agent, w, lr, steps, algorithm, f0_train=f0,
                                    f0_test=f0t, kernel_test_train=kern_t, y_test=yt,
                                    record_outputs=True)
    for form in ("gram", "features"):  # P x P Gram matrices or the Jacobian rows per step
        primal = predict_primal(arch.apply, params, x, y, agent, w, lr, steps, algorithm,
                                x_test=xt, y_test=yt, record_outputs=True, form=form)
        assert primal.metadata["primal"]["form"] == form
        for f in FIELDS:
            a, b = getattr(exact, f), getattr(primal, f)
            assert a is not None and a.shape == b.shape, f
            assert np.max(np.abs(a - b)) <= 1e-10, (form, f, np.max(np.abs(a - b)))
    assert primal.metadata["path"] == "primal"
    assert primal.metadata["primal"]["num_params"] == 57
    assert primal.metadata["kernel_layout"] == "full"


def test_primal_p2pl_phases_equal_kernel_path(small_mlp):
    arch, params, x, _, y, _, agent, w = small_mlp
    kern = mlp_empirical_ntk(arch, params, x, traced=False)
    f0 = np.asarray(arch.apply(params, x))
    algo = nd.algorithms.p2pl(3, 2)
    exact = nd.predict_from_kernels(kern, y, agent, w, 0.3, [0, 4, 9], algo, f0_train=f0)
    primal = predict_primal(arch.apply, params, x, y, agent, w, 0.3, [0, 4, 9], algo)
    assert primal.phases == ["local", "consensus"]
    for f in ("train_loss", "local_loss", "param_dist", "consensus_dist", "central_dist"):
        assert np.max(np.abs(getattr(exact, f) - getattr(primal, f))) <= 1e-10, f


@pytest.fixture(scope="module")
def digits_problem():
    data = nd.data.digits(classes=[0, 1], n_train=150, n_test=40, seed=0)
    parts = nd.data.partition(data, agents=4, scheme="dirichlet", alpha=1.0, seed=0)
    w = nd.graphs.mixing(nd.graphs.topology("ring", 4))
    arch = nd.models.MLP(hidden=(2,), out=2)  # P = 64*2 + 2 + 2*2 + 2 = 136 < N = 150
    return data, parts, w, arch


def test_nd_predict_path_primal_equals_full_empirical_kernel(digits_problem):
    data, parts, w, arch = digits_problem
    call = dict(lr=0.5, algorithm="atc", steps=range(0, 41, 10), kernel="empirical",
                record_outputs=True, seed=3)
    exact = nd.predict(arch, parts, w, traced=False, **call)
    primal = nd.predict(arch, parts, w, path="primal", **call)
    assert primal.metadata["primal"]["num_params"] == 136 < data.num_train
    assert primal.metadata["kernel"] == "empirical" and primal.metadata["path"] == "primal"
    assert_fields_close(exact, primal, FIELDS, 1e-10)


def test_path_errors_name_the_argument(digits_problem):
    data, parts, w, arch = digits_problem
    call = dict(lr=0.3, steps=range(0, 21, 10))
    with pytest.raises(ValueError, match="^path: expected one of"):
        nd.predict(arch, parts, w, path="dual", kernel="empirical", **call)
    with pytest.raises(ValueError, match="^path: .*kernel='empirical'"):
        nd.predict(arch, parts, w, path="primal", **call)
    with pytest.raises(ValueError, match="^path: .*exact; rank"):
        nd.predict(arch, parts, w, path="primal", kernel="empirical", rank=8, **call)
    gossip = nd.graphs.random_edges(nd.graphs.topology("ring", 4), 0.5, seed=0)
    with pytest.raises(ValueError, match="^path: .*static"):
        nd.predict(arch, parts, gossip, path="primal", kernel="empirical", **call)
    with pytest.raises(ValueError, match="^path: .*loss='mse'"):
        nd.predict(arch, parts, w, path="primal", kernel="empirical", loss="cross_entropy",
                   **call)
    with pytest.raises(ValueError, match="^path: .*discrete"):
        nd.predict(arch, parts, w, path="primal", kernel="empirical", continuous=True, **call)


def test_primal_refused_before_allocating_when_too_large(small_mlp, monkeypatch):
    arch, params, x, _, y, _, agent, w = small_mlp
    monkeypatch.setattr(memory, "available_memory_bytes", lambda: 10_000)
    with pytest.raises(memory.ProblemTooLargeError, match="P = 57 parameters for N = 200"):
        predict_primal(arch.apply, params, x, y, agent, w, 0.3, [0, 10])


# --------------------------------------------------------------------------- matrix-free form
MF_FIELDS = FIELDS + ("central_objective", "central_train_acc", "central_test_loss",
                      "mean_model_test_acc", "local_loss")


@pytest.mark.parametrize("algorithm", ["dgd", "atc", "gradient_tracking"])
def test_matrix_free_equals_stored_jacobian(small_mlp, algorithm):
    """J never stored (JVP / VJP per agent-aligned batch of 16; unequal shards, so padded
    batches): every recorded quantity within 1e-10 relative of the stored form (measured
    <= 3e-14)."""
    arch, params, x, xt, y, yt, agent, w = small_mlp
    call = dict(x_test=xt, y_test=yt, record_outputs=True)
    lr, steps = [0.3, 0.4, 0.35, 0.25], range(0, 61, 10)
    stored = predict_primal(arch.apply, params, x, y, agent, w, lr, steps, algorithm,
                            form="features", **call)
    free = predict_primal(arch.apply, params, x, y, agent, w, lr, steps, algorithm,
                          form="matrix_free", batch_size=16, **call)
    assert free.metadata["primal"]["form"] == "matrix_free"
    assert free.metadata["primal"]["batch_size"] == 16
    for f in MF_FIELDS:
        a, b = getattr(stored, f), getattr(free, f)
        assert a is not None and a.shape == b.shape, f
        assert np.max(np.abs(a - b)) <= 1e-10 * max(np.abs(a).max(), 1e-300), f


def test_matrix_free_p2pl_phases(small_mlp):
    arch, params, x, _, y, _, agent, w = small_mlp
    algo = nd.algorithms.p2pl(3, 2)
    stored = predict_primal(arch.apply, params, x, y, agent, w, 0.3, [0, 4, 9], algo,
                            form="gram", reference=False)
    free = predict_primal(arch.apply, params, x, y, agent, w, 0.3, [0, 4, 9], algo,
                          form="matrix_free", reference=False)
    assert free.phases == ["local", "consensus"] and free.central_dist is None
    for f in ("train_loss", "local_loss", "param_dist", "consensus_dist", "train_acc"):
        a, b = getattr(stored, f), getattr(free, f)
        assert np.max(np.abs(a - b)) <= 1e-10 * np.abs(a).max(), f


def test_matrix_free_memory_is_o_p_plus_nk_and_auto_picks_it(small_mlp, monkeypatch):
    """The estimate has no N K P term: growing N by 10x grows it by < 10 N (d + 2K + 2) x 16
    bytes, growing P by 10x grows it by the state only; "auto" takes the matrix-free form
    when the stored Jacobian does not fit, and refuses (naming both) when neither does."""
    from ntkdyn.lowrank.matfree import matrix_free_bytes

    def est(n, p):
        return matrix_free_bytes(n, 0, 10, p, 4, in_dim=784, batch=128,
                                 activation_bytes=128 * 1024 * 8)

    n, p = 60_000, 100_000
    assert est(10 * n, p) - est(n, p) == 8 * 2 * 9 * n * (784 + 2 * 10 + 2)
    assert est(n, 10 * p) - est(n, p) == 8 * 12 * 6 * 9 * p
    assert est(n, p) < 8 * n * 10 * p / 50  # the stored J alone is > 50x larger
    arch, params, x, _, y, _, agent, w = small_mlp
    stored_need = predict_primal(arch.apply, params, x, y, agent, w, 0.3, [0, 5],
                                 form="matrix_free").metadata["primal"]["stored_bytes"]
    free_need = predict_primal(arch.apply, params, x, y, agent, w, 0.3, [0, 5],
                               form="matrix_free").metadata["primal"]["memory_bytes"]
    assert free_need < stored_need
    monkeypatch.setattr(memory, "available_memory_bytes", lambda: (free_need + stored_need) // 2)
    auto = predict_primal(arch.apply, params, x, y, agent, w, 0.3, [0, 5])
    assert auto.metadata["primal"]["form"] == "matrix_free"
    monkeypatch.setattr(memory, "available_memory_bytes", lambda: free_need - 1)
    with pytest.raises(memory.ProblemTooLargeError, match="matrix-free.*stored-Jacobian"):
        predict_primal(arch.apply, params, x, y, agent, w, 0.3, [0, 5])
    monkeypatch.setattr(memory, "available_memory_bytes", lambda: 10**12)
    assert predict_primal(arch.apply, params, x, y, agent, w, 0.3,
                          [0, 5]).metadata["primal"]["form"] in ("gram", "features")
    with pytest.raises(ValueError, match="^form: expected one of"):
        predict_primal(arch.apply, params, x, y, agent, w, 0.3, [0, 5], form="jvp")


@pytest.mark.parametrize("cache", [False, True])
def test_matrix_free_cache_equals_stored_jacobian(small_mlp, cache):
    """The linearisation cache (pullbacks of every training and test batch kept; the JVP as
    their transpose) and no cache (linearised at every step) both match the stored
    Jacobian to 1e-10 relative on every recorded quantity, and the metadata says which."""
    arch, params, x, xt, y, yt, agent, w = small_mlp
    call = dict(x_test=xt, y_test=yt, record_outputs=True)
    lr, steps = [0.3, 0.4, 0.35, 0.25], range(0, 31, 10)
    stored = predict_primal(arch.apply, params, x, y, agent, w, lr, steps, "atc",
                            form="features", **call)
    free = predict_primal(arch.apply, params, x, y, agent, w, lr, steps, "atc",
                          form="matrix_free", batch_size=16, cache=cache, **call)
    meta = free.metadata["primal"]
    assert meta["cached"] == (["train", "test"] if cache else [])
    assert (meta["cache_bytes"] > 0) == cache
    for f in MF_FIELDS:
        a, b = getattr(stored, f), getattr(free, f)
        assert np.max(np.abs(a - b)) <= 1e-10 * max(np.abs(a).max(), 1e-300), f
    with pytest.raises(ValueError, match="^cache: expected"):
        predict_primal(arch.apply, params, x, y, agent, w, lr, steps, form="matrix_free",
                       cache="yes")


def test_matrix_free_trace_probes_estimate_tr_jtj(small_mlp):
    """The Hutchinson estimate of tr(J^T J) used above EXACT_TRACE_MAX (J never read) is
    within 3 sqrt(2 / probes) of the exact per-sample sum (here 64 probes: 53 %; measured
    well inside), with and without the linearisation cache (same numbers)."""
    import jax
    from jax.flatten_util import ravel_pytree

    from ntkdyn.lowrank import matfree

    arch, params, x, _, y, _, agent, w = small_mlp
    exact = matfree.jacobian_sq_norm(arch.apply, params, x, None)
    theta0, unravel = ravel_pytree(params)
    model = matfree.MatrixFreeModel(arch.apply, unravel)
    counts = np.array([200])
    data = matfree.matrix_free_data(np.asarray(theta0), x, np.zeros_like(y), y, counts,
                                    np.array([0.1]), np.ones((1, 1)), batch=16,
                                    batch_agent=np.zeros(13, np.int64), reference=False,
                                    limit=0.0)
    key = jax.random.PRNGKey(0)
    est = float(matfree.jacobian_sq_norm_probes(model, data["theta0"], data["train"], key, 64))
    assert abs(est - exact) <= 3 * np.sqrt(2 / 64) * exact
    matfree.add_cache(model, data, 10**9)
    again = float(matfree.jacobian_sq_norm_probes(model, data["theta0"], data["train"], key,
                                                  64))
    assert abs(again - est) <= 1e-10 * exact
