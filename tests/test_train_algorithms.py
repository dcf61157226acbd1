"""The training harness runs the new schedules (issue 6) with the same schedule code.

float64 linearised training (real ``jax.jvp`` linearisation of an MLP, parameters
stacked on an agent axis) against the kernel-space prediction with the full
empirical kernel: every metric, including the after-local / after-consensus
records of P2PL and every sampled gossip sequence, within a relative 1e-8 of its
largest value (observed ~1e-14).
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import interrupt_after_checkpoints

import ntkdyn as nd
from ntkdyn import algorithms
from ntkdyn.training.trainer import train
from ntkdyn.validation import agreement

METRICS = ("train_loss", "test_loss", "local_loss", "objective", "train_acc", "test_acc",
           "param_dist", "consensus_dist", "central_dist", "central_train_loss",
           "central_test_loss", "central_param_dist", "mean_model_train_loss",
           "mean_model_test_loss", "train_outputs", "test_outputs")


@pytest.fixture(scope="module")
def setting():
    data = nd.data.digits(classes=range(3), n_train=40, n_test=20, seed=0)
    parts = nd.data.partition(data, agents=4, scheme="dirichlet", alpha=1.0, seed=0)
    arch = nd.models.MLP(hidden=(32,), out=3)
    params = nd.init_params(arch, data.dim, seed=0)
    ring = nd.graphs.topology("ring", 4)
    return parts, arch, params, ring


def _rel(a, b, scale=None) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    scale = np.max(np.abs(b)) if scale is None else scale
    return float(np.max(np.abs(a - b)) / max(scale, 1e-300))


def _compare(obs, pred, tol=1e-8):
    np.testing.assert_array_equal(obs.steps, pred.steps)
    dist_scale = np.max(pred.param_dist)
    for m in METRICS:
        scale = dist_scale if m.endswith("_dist") else None
        assert _rel(getattr(obs, m), getattr(pred, m), scale) <= tol, m


CASES = {
    "p2pl": (algorithms.p2pl(3, 2), "static"),
    "gradient_tracking": ("gradient_tracking", "static"),
    "extra": ("extra", "static"),
    "momentum": (algorithms.momentum(0.5), "static"),
    "dgd-periodic": ("dgd", "periodic"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_linearised_training_equals_prediction(setting, case):
    parts, arch, params, ring = setting
    algorithm, kind = CASES[case]
    w = nd.graphs.mixing(ring)
    mixing = {"static": w,
              "periodic": nd.graphs.periodic([w, nd.graphs.mixing(nd.graphs.topology("star", 4))]),
              }[kind]
    steps = range(0, 13, 3)
    obs = train(arch, parts, mixing, 0.3, algorithm, steps, params0=params, model="linearised",
                dtype="float64", record_outputs=True, chunk=2)
    pred = nd.predict(arch, parts, mixing, 0.3, algorithm, steps, kernel="empirical",
                      traced=False, params=params, f0="network", record_outputs=True)
    assert obs.status == pred.status == "ok"
    _compare(obs, pred)
    if case == "p2pl":
        assert obs.phases == pred.phases == ["local", "consensus"]
        comp = agreement.compare(pred, obs)
        assert comp["steps_compared"] == 2 * len(steps)
        assert comp["metrics"]["test_loss"]["mean"] < 1e-8


def test_every_gossip_sample_is_a_training_run(setting):
    """Sample s of the prediction is the training with gossip_sample=s (one random edge per
    step, gradient tracking): the prediction's mean over 2 samples is the mean of the two
    trainings, for every metric."""
    parts, arch, params, ring = setting
    gossip = nd.graphs.one_random_edge(ring, seed=4)
    steps = range(0, 9, 4)
    runs = [train(arch, parts, gossip, 0.3, "gradient_tracking", steps, params0=params,
                  model="linearised", dtype="float64", gossip_sample=s, record_outputs=True)
            for s in range(2)]
    pred = nd.predict(arch, parts, gossip, 0.3, "gradient_tracking", steps, kernel="empirical",
                      traced=False, params=params, f0="network", samples=2,
                      record_outputs=True)
    mean = dict(runs[0].__dict__)
    for m in METRICS:
        mean[m] = np.mean([getattr(r, m) for r in runs], axis=0)
    _compare(type(runs[0])(**mean), pred)
    assert not np.allclose(runs[0].consensus_dist, runs[1].consensus_dist)
    assert runs[1].metadata["gossip_sample"] == 1


def test_checkpoint_resume_with_augmented_state(setting, tmp_path, monkeypatch):
    """Gradient tracking's state (x, y, g) survives an interrupted, resumed training."""
    parts, arch, params, ring = setting
    w = nd.graphs.mixing(ring)
    kw = dict(params0=params, steps=range(0, 9, 2), chunk=1, checkpoint_interval=0.0)
    full = train(arch, parts, w, 0.3, "gradient_tracking", **kw)
    restore = interrupt_after_checkpoints(monkeypatch, 2)
    ck = tmp_path / "ck.npz"
    with pytest.raises(KeyboardInterrupt):
        train(arch, parts, w, 0.3, "gradient_tracking", checkpoint=ck, **kw)
    restore()
    resumed = train(arch, parts, w, 0.3, "gradient_tracking", checkpoint=ck, **kw)
    assert resumed.metadata["training"]["resumed_from_step"] == 2
    for m in ("train_loss", "test_loss", "param_dist", "consensus_dist"):
        np.testing.assert_array_equal(getattr(resumed, m), getattr(full, m), err_msg=m)
