"""The training harness (ntkdyn.training.trainer) against the core's predictions and a plain loop.

Tolerances: float64 exactness checks (linearised training vs full empirical
kernel; vmapped vs loop) at relative 1e-8 / 1e-10 of each metric's largest
value; the width test asks for a 3x smaller error at width 2048 than at 128
(measured: 11x for the test loss, 15x for the parameter distance).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import interrupt_after_checkpoints

import ntkdyn as nd
from ntkdyn.training.trainer import train
from ntkdyn.validation.agreement import compare

#: every metric a Trajectory defines (one place: ``ntkdyn.trajectory.METRICS``) and the outputs
METRICS = nd.trajectory.METRICS + ("train_outputs", "test_outputs")


@pytest.fixture(scope="module")
def parts4():
    """Digits, 3 classes, 62 training samples on 4 agents (shards 16, 16, 15, 15)."""
    data = nd.data.digits(classes=range(3), n_train=62, n_test=30, seed=0)
    return nd.data.partition(data, agents=4, scheme="iid", seed=0)


@pytest.fixture(scope="module")
def ring4():
    return nd.graphs.mixing(nd.graphs.topology("ring", 4))


def _rel(a, b, scale=None) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    scale = np.max(np.abs(b)) if scale is None else scale
    return float(np.max(np.abs(a - b)) / max(scale, 1e-300))


@pytest.mark.parametrize("algorithm", ["dgd", "atc", "cta"])
def test_linearised_training_equals_full_empirical_kernel_prediction(parts4, ring4, algorithm):
    """Test 1: float64 linearised training == kernel-space prediction (full kernel), <= 1e-8."""
    arch = nd.models.MLP(hidden=(48, 48), out=3)
    params = nd.init_params(arch, parts4.dataset.dim, seed=0)
    steps = range(0, 41, 5)
    obs = train(arch, parts4, ring4, 0.25, algorithm, steps, params0=params, model="linearised",
                dtype="float64", record_outputs=True)
    pred = nd.predict(arch, parts4, ring4, 0.25, algorithm, steps, kernel="empirical",
                      traced=False, params=params, f0="network", record_outputs=True)
    assert obs.status == pred.status == "ok"
    np.testing.assert_array_equal(obs.steps, pred.steps)
    dist_scale = np.max(pred.param_dist)
    for m in METRICS:  # every metric is recorded by both engines, and they agree
        assert getattr(obs, m) is not None and getattr(pred, m) is not None, m
        scale = dist_scale if m.endswith("_dist") else None  # distances that are ~0 (ATC)
        assert _rel(getattr(obs, m), getattr(pred, m), scale) <= 1e-8, m
    assert obs.param_dist[-1].min() > 0.1  # it did move


@pytest.mark.parametrize("algorithm", ["dgd", "atc"])
def test_linearised_cross_entropy_training_equals_full_empirical_kernel_prediction(
        parts4, ring4, algorithm):
    """Cross-entropy (logit scale 2): float64 linearised training == kernel-space prediction
    (full empirical kernel) for every metric, <= 1e-8 relative."""
    arch = nd.models.MLP(hidden=(48, 48), out=3)
    params = nd.init_params(arch, parts4.dataset.dim, seed=0)
    steps = range(0, 41, 5)
    obs = train(arch, parts4, ring4, 0.5, algorithm, steps, params0=params, model="linearised",
                dtype="float64", record_outputs=True, loss="cross_entropy", logit_scale=2.0)
    pred = nd.predict(arch, parts4, ring4, 0.5, algorithm, steps, kernel="empirical",
                      traced=False, params=params, f0="network", record_outputs=True,
                      loss="cross_entropy", logit_scale=2.0)
    assert obs.status == pred.status == "ok"
    assert obs.metadata["loss"] == pred.metadata["loss"] == "cross_entropy"
    assert obs.metadata["training"]["logit_scale"] == 2.0
    np.testing.assert_array_equal(obs.steps, pred.steps)
    dist_scale = np.max(pred.param_dist)
    for m in METRICS:
        scale = dist_scale if m.endswith("_dist") else None
        assert _rel(getattr(obs, m), getattr(pred, m), scale) <= 1e-8, m
    assert obs.param_dist[-1].min() > 0.1  # it did move
    # it is the cross-entropy, not the squared loss: log K at f = 0, decreasing
    assert obs.train_loss[-1].max() < obs.train_loss[0].min()
    mse = train(arch, parts4, ring4, 0.5, algorithm, steps, params0=params, model="linearised",
                dtype="float64")
    assert _rel(mse.train_loss, obs.train_loss) > 1e-2


def test_train_loss_arguments_are_checked(parts4, ring4):
    arch = nd.models.MLP(hidden=(16,), out=3)
    with pytest.raises(ValueError, match="^loss: expected one of"):
        train(arch, parts4, ring4, 0.5, "dgd", 2, loss="hinge")
    with pytest.raises(ValueError, match="^logit_scale: expected a finite number > 0"):
        train(arch, parts4, ring4, 0.5, "dgd", 2, loss="cross_entropy", logit_scale=0.0)
    with pytest.raises(ValueError, match="^logit_scale: only for loss='cross_entropy'"):
        train(arch, parts4, ring4, 0.5, "dgd", 2, logit_scale=2.0)
    centred = nd.data.partition(nd.data.digits(classes=range(3), n_train=20, n_test=0,
                                               centre_targets=True), agents=4)
    with pytest.raises(ValueError, match="^parts.dataset.y_train: loss='cross_entropy'"):
        train(arch, centred, ring4, 0.5, "dgd", 2, loss="cross_entropy")


def test_nonlinear_agreement_improves_with_width(parts4, ring4):
    """Test 2: relative trajectory error at width 2048 is >= 3x smaller than at width 128."""
    steps = range(0, 101, 10)
    errs = {}
    for width in (128, 2048):
        arch = nd.models.MLP(hidden=(width,), out=3)
        params = jax.tree.map(lambda a: np.asarray(a, np.float32).astype(np.float64),
                              nd.init_params(arch, parts4.dataset.dim, seed=0))
        obs = train(arch, parts4, ring4, 0.5, "dgd", steps, params0=params)  # float32
        pred = nd.predict(arch, parts4, ring4, 0.5, "dgd", steps, kernel="empirical",
                          traced=False, params=params, f0="network")
        comp = compare(pred, obs)["metrics"]
        errs[width] = {m: comp[m]["mean"] for m in ("test_loss", "param_dist")}
    for m in ("test_loss", "param_dist"):
        assert 3 * errs[2048][m] <= errs[128][m], (m, errs)
    assert errs[2048]["test_loss"] < 0.01


def _loop_reference(arch, parts, w, lr, algorithm, n_steps, params):
    """Agents as a Python list, one jax.grad per agent on its own (unpadded) shard."""
    q_count = parts.num_agents
    shards = [tuple(jnp.asarray(a) for a in parts.shard(q)) for q in range(q_count)]

    def local_loss(p, x, y):
        return 0.5 * jnp.mean(jnp.sum((arch.apply(p, x) - y) ** 2, axis=-1))

    grad = jax.jit(jax.grad(local_loss))

    def combine(thetas):
        return [jax.tree.map(lambda *leaves, q=q: sum(w[q, j] * leaves[j]
                                                       for j in range(q_count)), *thetas)
                for q in range(q_count)]

    def step_agent(theta, q):
        return jax.tree.map(lambda a, g: a - lr * g, theta, grad(theta, *shards[q]))

    thetas, central = [params] * q_count, params
    x_all = jnp.asarray(parts.dataset.x_train)
    outs, central_out = [], []
    for _ in range(n_steps + 1):
        outs.append(np.stack([np.asarray(arch.apply(t, x_all)) for t in thetas]))
        central_out.append(np.asarray(arch.apply(central, x_all)))
        if algorithm == "dgd":
            mixed = combine(thetas)
            thetas = [jax.tree.map(lambda m, g: m - lr * g, mixed[q], grad(thetas[q], *shards[q]))
                      for q in range(q_count)]
        elif algorithm == "atc":
            thetas = combine([step_agent(thetas[q], q) for q in range(q_count)])
        else:  # cta
            thetas = [step_agent(phi, q) for q, phi in enumerate(combine(thetas))]
        g_c = [grad(central, *shards[q]) for q in range(q_count)]
        central = jax.tree.map(lambda a, *gs: a - lr * sum(gs) / q_count, central, *g_c)
    return np.stack(outs), np.stack(central_out)


@pytest.mark.parametrize("algorithm", ["dgd", "atc", "cta"])
def test_vmapped_agents_equal_python_loop(algorithm):
    """Test 3: stacked/vmapped agents == a Python loop over agents (unequal shards), 1e-10."""
    data = nd.data.digits(classes=range(3), n_train=40, n_test=0, seed=1)
    parts = nd.data.partition(data, agents=3, scheme="dirichlet", alpha=0.5, seed=1)
    assert len(set(parts.counts)) > 1  # padding and per-sample weights are exercised
    w = nd.graphs.mixing(nd.graphs.topology("path", 3))
    arch = nd.models.MLP(hidden=(32, 32), out=3)
    params = nd.init_params(arch, data.dim, seed=3)
    n = 6
    obs = train(arch, parts, w, 0.4, algorithm, range(n + 1), params0=params, dtype="float64",
                record_outputs=True, chunk=4)
    outs, central_out = _loop_reference(arch, parts, w, 0.4, algorithm, n, params)
    assert _rel(obs.train_outputs, outs) <= 1e-10
    central_loss = 0.5 * np.mean(np.sum((central_out - parts.dataset.y_train) ** 2, -1), -1)
    assert _rel(obs.central_train_loss, central_loss) <= 1e-10
    assert obs.test_loss is None


def test_resume_from_checkpoint_is_bitwise_identical(parts4, ring4, tmp_path, monkeypatch):
    """An interrupted train(checkpoint=...) resumed gives the uninterrupted result exactly."""
    arch = nd.models.MLP(hidden=(64,), out=3)
    kw = dict(steps=range(0, 61, 5), chunk=3, checkpoint_interval=0.0)
    full = train(arch, parts4, ring4, 0.5, "cta", **kw)
    restore = interrupt_after_checkpoints(monkeypatch, 2)
    ck = tmp_path / "ck.npz"
    with pytest.raises(KeyboardInterrupt):
        train(arch, parts4, ring4, 0.5, "cta", checkpoint=ck, **kw)
    restore()
    resumed = train(arch, parts4, ring4, 0.5, "cta", checkpoint=ck, **kw)
    assert resumed.metadata["training"]["resumed_from_step"] == 25  # two chunks of 3 records
    for m in METRICS[:14]:
        np.testing.assert_array_equal(getattr(resumed, m), getattr(full, m), err_msg=m)
    with pytest.raises(ValueError, match="checkpoint: .* different run"):
        train(arch, parts4, ring4, 0.25, "cta", checkpoint=ck, **kw)


def test_divergence_is_reported_without_nans(parts4, ring4):
    arch = nd.models.MLP(hidden=(64,), out=3)
    for model in ("nonlinear", "linearised"):
        obs = train(arch, parts4, ring4, 60.0, "dgd", range(0, 51, 5), model=model)
        assert obs.status == "diverged" and obs.diverged_at is not None
        assert obs.steps[-1] < obs.diverged_at <= 50
        assert "diverged at step" in obs.metadata["divergence"]
        for m in METRICS[:14]:
            arr = getattr(obs, m)
            assert arr is None or np.all(np.isfinite(arr)), m


def test_minibatch_and_independent_init_options(parts4, ring4):
    arch = nd.models.MLP(hidden=(256,), out=3)
    steps = range(0, 61, 10)
    full = train(arch, parts4, ring4, 0.5, "atc", steps)
    sgd = train(arch, parts4, ring4, 0.5, "atc", steps, batch_size=8)
    indep = train(arch, parts4, ring4, 0.5, "atc", steps, independent_init=True)
    assert any("mean" in n for n in sgd.metadata["notes"])
    assert any("outside the theory" in n for n in indep.metadata["notes"])
    assert not np.array_equal(sgd.train_loss, full.train_loss)
    # SGD still learns, and its mean path stays near full batch's
    assert sgd.network_mean("train_loss")[-1] < 0.5 * sgd.network_mean("train_loss")[0]
    assert abs(sgd.network_mean("test_loss")[-1] - full.network_mean("test_loss")[-1]) < 0.2
    # agents start apart with independent initialisations, together otherwise
    assert indep.consensus_dist[0].min() > 1.0 and full.consensus_dist[0].max() == 0.0
    assert full.train_loss.dtype == np.float64  # records in float64 even for float32 training
    assert full.metadata["training"]["dtype"] == "float32"


@pytest.mark.parametrize("kwargs, needle", [
    (dict(model="linear"), "model: expected one of"),
    (dict(dtype="float16"), "dtype: expected one of"),
    (dict(batch_size=-1), "batch_size: expected an integer >= 0"),
    (dict(chunk=0), "chunk: expected an integer >= 1"),
    (dict(lr=-0.1), "lr: learning rates must be > 0"),
])
def test_bad_arguments_name_the_argument(parts4, ring4, kwargs, needle):
    arch = nd.models.MLP(hidden=(8,), out=3)
    lr = kwargs.pop("lr", 0.1)
    with pytest.raises(ValueError, match=needle):
        train(arch, parts4, ring4, lr, "dgd", 5, **kwargs)


def test_wrong_mixing_and_arch_are_rejected(parts4):
    with pytest.raises(ValueError, match="mixing: expected a \\(4, 4\\)"):
        train(nd.models.MLP(hidden=(8,), out=3), parts4,
              nd.graphs.mixing(nd.graphs.topology("ring", 3)), 0.1, "dgd", 5)
    with pytest.raises(ValueError, match="arch.out"):
        train(nd.models.MLP(hidden=(8,), out=10), parts4,
              nd.graphs.mixing(nd.graphs.topology("ring", 4)), 0.1, "dgd", 5)


def test_params0_of_another_architecture_is_refused(parts4, ring4):
    """params0 drawn for width 16 with an MLP of width 32 (or depth 2) trained the width-16
    network silently, bitwise equal to training MLP(hidden=(16,)); now a ValueError naming
    params0, the layer and both shapes, as nd.predict does for params."""
    p16 = nd.init_params(nd.models.MLP(hidden=(16,), out=3), parts4.dataset.dim, 0)
    with pytest.raises(ValueError, match=r"^params0: layer 0 has W \(64, 16\), b \(16,\); "
                                         r"expected \(64, 32\) and \(32,\)$"):
        train(nd.models.MLP(hidden=(32,), out=3), parts4, ring4, 0.3, "dgd", 5, params0=p16)
    with pytest.raises(ValueError, match=r"^params0: expected 3 \(W, b\) pairs for "
                                         r"hidden=\(16, 16\), got 2$"):
        train(nd.models.MLP(hidden=(16, 16), out=3), parts4, ring4, 0.3, "dgd", 5,
              params0=p16)
    assert train(nd.models.MLP(hidden=(16,), out=3), parts4, ring4, 0.3, "dgd", 5,
                 params0=p16).status == "ok"
