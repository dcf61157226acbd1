"""Kernels of your own model, in your sample order (issue 12, item 6)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import rel_err

import ntkdyn as nd


@pytest.fixture(scope="module")
def setup():
    data = nd.data.digits(classes=[0, 1, 2, 3], n_train=80, n_test=40, seed=0)
    parts = nd.data.partition(data, agents=4, scheme="dirichlet", alpha=1.0, seed=0)
    w = nd.graphs.mixing(nd.graphs.topology("ring", 4))
    return data, parts, w


def test_partition_lines_up_with_the_callers_data(setup):
    """A kernel computed on ``data.x_train`` (the caller's order) with ``parts.agent``
    gives nd.predict's prediction (before issue 12 parts.agent was sorted and lined up
    with a reordered parts.dataset: test loss off by ~10 %)."""
    data, parts, w = setup
    assert parts.dataset is data and not parts.is_sorted
    arch = nd.models.MLP(hidden=(128, 128), out=4)
    steps = range(0, 101, 20)
    ref = nd.predict(arch, parts, w, 0.3, "dgd", steps, record_outputs=True, f0="mean")
    own = nd.predict_from_kernels(
        arch.kernel(data.x_train), data.y_train, parts.agent, w, 0.3, steps,
        kernel_test_train=arch.kernel(data.x_test, data.x_train), y_test=data.y_test,
        record_outputs=True)
    for f in ("train_loss", "test_loss", "param_dist", "consensus_dist", "local_loss"):
        assert rel_err(getattr(own, f), getattr(ref, f)) < 1e-10, f
    # outputs are in the caller's sample order on both paths
    assert rel_err(own.train_outputs, ref.train_outputs) < 1e-10


def init_mlp(key, sizes):
    """A plain-JAX MLP in the NTK parameterisation: a list of (W, b), N(0, 1) entries."""
    params = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True):
        key, k1, k2 = jax.random.split(key, 3)
        params.append((jax.random.normal(k1, (n_in, n_out)), jax.random.normal(k2, (n_out,))))
    return params


def apply_mlp(params, x, w_std=1.4, b_std=0.1):
    """``z = (w_std / sqrt(n_in)) h W + b_std b``, ReLU between layers; (B, K) outputs."""
    h = x
    for i, (W, b) in enumerate(params):
        h = (w_std / jnp.sqrt(W.shape[0])) * (h @ W) + b_std * b
        if i < len(params) - 1:
            h = jax.nn.relu(h)
    return h


def test_plain_jax_model_end_to_end(setup):
    """README "Bring your own model": empirical_ntk of any apply(params, x) plus
    predict_from_kernels equals the built-in MLP's empirical prediction (same network)."""
    data, parts, w = setup
    params = init_mlp(jax.random.PRNGKey(0), [data.dim, 128, 128, 4])
    x, xt = data.x_train, data.x_test
    theta = nd.kernels.empirical_ntk(apply_mlp, params, x)           # (N, N), traced
    theta_t = nd.kernels.empirical_ntk(apply_mlp, params, xt, x)     # (M, N)
    traj = nd.predict_from_kernels(
        theta, data.y_train, parts.agent, w, lr=0.3, steps=range(0, 101, 20),
        f0_train=apply_mlp(params, x), kernel_test_train=theta_t, y_test=data.y_test,
        f0_test=apply_mlp(params, xt))
    arch = nd.models.MLP(hidden=(128, 128), out=4)  # the same network, built in
    ref = nd.predict(arch, parts, w, 0.3, "dgd", range(0, 101, 20), kernel="empirical",
                     params=[(np.asarray(a), np.asarray(b)) for a, b in params])
    assert traj.status == "ok"
    for f in ("train_loss", "test_loss", "param_dist", "test_acc"):
        assert rel_err(getattr(traj, f), getattr(ref, f)) < 1e-9, f
