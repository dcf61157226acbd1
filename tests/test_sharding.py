"""Sharded predictions on 4 simulated CPU devices (run in a subprocess: the device count
is fixed when JAX starts)."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

# every schedule once (gradient tracking: an augmented state) and DGD on both partitions;
# all ten pairs ran until 2026-11-30, 62 s of the suite, mostly compiling
CASES = {"equal": ("dgd", "atc", "p2pl"), "unequal": ("dgd", "cta", "gradient_tracking")}

SCRIPT = f"CASES = {CASES!r}\n" + textwrap.dedent(r'''
import json, sys
import numpy as np, jax
import ntkdyn as nd
from ntkdyn.dynamics import sharding
from ntkdyn.prediction import predict_from_kernels

assert len(jax.devices()) == 4, jax.devices()
out = {}
rng = np.random.default_rng(0)
n, k, q = 45, 3, 4                      # 45 samples: uneven over 4 devices
x = rng.normal(size=(n, 5)); xt = rng.normal(size=(10, 5))
arch = nd.models.MLP(hidden=(64, 64), out=k)
kern, ktt = arch.kernel(x), arch.kernel(xt, x)
y = np.eye(k)[rng.integers(0, k, n)]; yt = np.eye(k)[rng.integers(0, k, 10)]
w = nd.graphs.mixing(nd.graphs.topology("path", q))
f0 = 0.1 * rng.normal(size=y.shape)
partitions = {"equal": np.arange(n) % q, "unequal": np.minimum(np.arange(n) // 12, q - 1)}
for agent_kind, algos in CASES.items():
    agent = partitions[agent_kind]
    for algo in algos:
        common = dict(algorithm=algo, f0_train=f0, kernel_test_train=ktt, y_test=yt,
                      f0_test=np.zeros_like(yt), record_outputs=True)
        one = predict_from_kernels(kern, y, agent, w, 0.4, range(0, 31, 5), **common)
        four = predict_from_kernels(kern, y, agent, w, 0.4, range(0, 31, 5),
                                    devices=jax.devices(), **common)
        errs = {}
        for m in ("train_outputs", "test_outputs", "train_loss", "test_loss", "param_dist",
                  "consensus_dist", "central_dist", "objective"):
            a, b = getattr(one, m), getattr(four, m)
            errs[m] = float(np.max(np.abs(a - b)) / max(np.max(np.abs(a)), 1e-300))
        out[f"{agent_kind}/{algo}"] = errs
# the cross-entropy gradient flow (diffrax) on the same mesh
for algo in ("dgd", "atc"):
    common = dict(algorithm=algo, kernel_test_train=ktt, y_test=yt, record_outputs=True,
                  loss="cross_entropy", continuous=True)
    agent = np.minimum(np.arange(n) // 12, q - 1)
    one = predict_from_kernels(kern, y, agent, w, 0.4, [0.0, 2.5, 10.0], **common)
    four = predict_from_kernels(kern, y, agent, w, 0.4, [0.0, 2.5, 10.0],
                                devices=jax.devices(), **common)
    errs = {}
    for m in ("train_outputs", "test_outputs", "train_loss", "test_loss", "param_dist",
              "consensus_dist"):
        a, b = getattr(one, m), getattr(four, m)
        errs[m] = float(np.max(np.abs(a - b)) / max(np.max(np.abs(a)), 1e-300))
    out[f"flow/{algo}"] = errs
    out[f"flow/{algo}/steps"] = [one.metadata["flow"]["solver_steps"],
                                 four.metadata["flow"]["solver_steps"]]
# blockwise kernel straight into the sharded layout vs one shot
mesh = sharding.make_mesh()
blk = sharding.analytic_kernel_sharded(arch, x, x, mesh)
out["blockwise_rel_err"] = float(np.max(np.abs(np.asarray(blk)[:, :n] - kern))
                                 / np.abs(kern).max())
out["shard_shapes"] = [list(s.data.shape) for s in blk.addressable_shards]
est = sharding.per_device_bytes(n, 0, 1, 1, 4, traced=True)
out["estimate_kernel_bytes"] = est["kernel"]
out["measured_max_shard_bytes"] = max(s.data.nbytes for s in blk.addressable_shards)
json.dump(out, sys.stdout)
''')


@pytest.fixture(scope="module")
def results():
    env = dict(os.environ, XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} "
                                     "--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          env=env, cwd=Path(__file__).parents[1], timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


@pytest.mark.parametrize("case", [f"{a}/{b}" for a, algos in CASES.items() for b in algos])
def test_four_devices_equal_one_device(results, case):
    for metric, err in results[case].items():
        assert err <= 1e-12, (case, metric, err)


@pytest.mark.parametrize("algo", ["dgd", "atc"])
def test_cross_entropy_flow_on_four_devices_equals_one_device(results, algo):
    """The adaptive flow sharded over 4 devices: same answer to 1e-9 (the adaptive step
    sizes depend on error norms that differ at round-off, so not to 1e-12)."""
    for metric, err in results[f"flow/{algo}"].items():
        assert err <= 1e-9, (algo, metric, err)
    one, four = results[f"flow/{algo}/steps"]
    assert abs(one - four) <= 2, (one, four)


def test_blockwise_kernel_equals_one_shot(results):
    assert results["blockwise_rel_err"] <= 1e-12
    assert [s[1] for s in results["shard_shapes"]] == [12, 12, 12, 12]  # 45 padded to 48


def test_shard_memory_within_estimate(results):
    assert results["measured_max_shard_bytes"] <= results["estimate_kernel_bytes"]


def test_too_large_for_the_devices_says_what_would_fit(monkeypatch):
    import jax
    import numpy as np

    import ntkdyn as nd
    from ntkdyn._utils.memory import ProblemTooLargeError

    monkeypatch.setenv("NTKDYN_MEMORY_LIMIT", "100KB")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3))
    with pytest.raises(ProblemTooLargeError) as err:
        nd.predict_from_kernels(x @ x.T + np.eye(200), np.eye(2)[np.arange(200) % 2],
                                np.arange(200) % 4, np.full((4, 4), 0.25), 0.1, [0, 1],
                                devices=jax.devices())
    msg = str(err.value)
    assert "per device" in msg and "devices" in msg and "float32" in msg
