"""Memory estimates against the measured peak of a fresh process (issue 12, item 5).

The estimate (:func:`ntkdyn.prediction.prediction_estimate`) is of the *growth* of the
resident set: ``VmHWM`` at the end minus ``VmRSS`` just before ``nd.predict`` (the
interpreter, jax and the data are subtracted, as :func:`ntkdyn._utils.memory.ensure_fits`
compares with ``MemAvailable``, which excludes them).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import TEST_XLA_FLAGS

import ntkdyn as nd
from ntkdyn import prediction as pipeline
from ntkdyn._utils import memory

ROOT = Path(__file__).resolve().parents[1]

PROBE = r"""
import json, re, sys
def st(key):
    return int(re.search(key + r":\s+(\d+)", open("/proc/self/status").read()).group(1)) * 1024
import ntkdyn as nd
from ntkdyn import prediction as pipeline
n, kernel, width = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
mode = sys.argv[4] if len(sys.argv) > 4 else "plain"
m, q, k, d = 200, 4, 10, 16
data = nd.data.synthetic(n_train=n, n_test=m, dim=d, classes=k, seed=0)
parts = nd.data.partition(data, q, "iid", seed=0)
W = nd.graphs.mixing(nd.graphs.topology("ring", q))
kw = {}
if mode == "mean-gossip":
    W = nd.graphs.random_edges(nd.graphs.topology("ring", q), p=0.5, seed=0)
    kw = {"f0": "mean", "samples": 16}
elif mode == "ce":  # one random network, cross-entropy: P + 1 groups of K columns
    kw = {"loss": "cross_entropy"}
elif mode == "gossip":  # one random network, random gossip: 2 S + 1 groups
    W = nd.graphs.random_edges(nd.graphs.topology("ring", q), p=0.5, seed=0)
elif mode == "sgd":  # one random network, mini-batch SGD: 2 S + 1 groups, batch keys
    kw = {"batch_size": 16, "samples": 8}
elif mode == "mean-sgd":  # the mean network, mini-batch SGD: S + 1 groups
    kw = {"f0": "mean", "batch_size": 16, "samples": 8}
arch = nd.models.MLP(hidden=(width, width), out=k)
est = pipeline.prediction_estimate(arch, n, m, d, k, q, kernel=kernel,
                                   f0_random=None if mode == "plain"
                                   else not mode.startswith("mean"),
                                   loss=kw.get("loss", "mse"), random_mixing="gossip" in mode,
                                   batch_size=kw.get("batch_size", 0),
                                   samples=kw.get("samples"))
try:
    open("/proc/self/clear_refs", "w").write("5")  # VmHWM := VmRSS
except OSError:
    pass
base = st("VmRSS")
nd.predict(arch, parts, W, lr=0.05, steps=range(0, 21, 10), kernel=kernel, **kw)
print(json.dumps({"estimate": est, "peak": st("VmHWM") - base}))
"""


def _measure(n: int, kernel: str, width: int = 64, mode: str = "plain") -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    env.pop("JAX_DISABLE_MOST_OPTIMIZATIONS", None)  # measure what users run (conftest.py)
    env["XLA_FLAGS"] = env.get("XLA_FLAGS", "").replace(TEST_XLA_FLAGS, "").strip()
    out = subprocess.run([sys.executable, "-c", PROBE, str(n), kernel, str(width), mode],
                         capture_output=True, text=True, env=env, cwd=ROOT, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc (Linux)")
@pytest.mark.parametrize("kernel", ["analytic", "empirical"])
def test_estimate_within_30_percent_of_measured_peak(kernel):
    """Three sizes; the estimate is within +-30 % of the measured peak growth.

    With the analytic kernel the default is one random network; its sampled networks'
    record arrays are counted in the solve phase only, where a VmRSS timeline puts the
    peak (above the eigh phase), with NETWORK_RUNTIME_BYTES for compiling the recording
    chunk: measured 1.035-1.041 at N = 2,000 / 3,000 / 4,500 (2026-11-30). Counted on top
    of every phase before, they gave 1.26-1.36 at N = 4,500 and the upper bound had been
    loosened to 1.4.  Two sizes since 2026-11-30 (stop 27, for the suite's time: 38 -> 17 s
    per kernel on the idle machine), measured there: analytic 0.967 / 1.029, empirical
    1.080 / 1.155 at N = 1,500 / 3,000."""
    ratios = {}  # measured (loaded 2-core machine): see the README, "Memory"
    for n in (1500, 3000):
        r = _measure(n, kernel)
        ratios[n] = r["estimate"] / r["peak"]
    assert all(0.7 <= v <= 1.3 for v in ratios.values()), ratios


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc (Linux)")
@pytest.mark.parametrize("mode", ["ce", "gossip"])
def test_random_network_groups_estimate_within_30_percent(mode):
    """One random network where every sampled network runs its own column group
    (cross-entropy: P + 1 = 17 groups; random gossip: 3 S + 1 = 49): the estimate is within
    +-30 % of the measured peak growth (measured 0.93-1.15 on the loaded 2-core machine;
    before the groups were counted, gossip was 0.64-0.69; at N = 1,500 / 3,000, the sizes
    since stop 27, ce 0.994 / 1.017 and gossip 1.114 / 1.077 on the idle machine).  One
    size since 2026-11-30, the larger (the suite's time; the scaling with N is the plain
    estimate's, tested at two sizes above)."""
    r = _measure(3000, "analytic", mode=mode)
    assert 0.7 <= r["estimate"] / r["peak"] <= 1.3, r


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc (Linux)")
@pytest.mark.parametrize("mode", ["sgd", "mean-sgd"])
def test_minibatch_estimate_within_30_percent(mode):
    """Mini-batch SGD (batch 16, 8 sequences): the sequence column groups and the batch keys
    are counted; one random network (``sgd``, network s on batch sequence s) and the mean
    network (``mean-sgd``, S + 1 groups) are within +-30 % of the measured peak growth at
    two sizes (measured on the loaded 2-core machine, N = 2,000 / 4,500: sgd 0.92 / 0.89,
    mean-sgd 1.04 / 1.00; before MINIBATCH_RUNTIME_BYTES and without the eigh buffers the
    mean network was 0.67 / 0.81; at N = 1,500 / 3,000, the sizes since stop 27, sgd
    1.033 / 0.902 and mean-sgd 1.19 / 1.023 on the idle machine).  One size since
    2026-11-30, the larger, as the test above."""
    r = _measure(3000, "analytic", mode=mode)
    assert 0.7 <= r["estimate"] / r["peak"] <= 1.3, r


@pytest.mark.parametrize("kw, groups", [
    ({"loss": "cross_entropy"}, 17),
    ({"random_mixing": True}, 49),  # 3 S + 1 with the band over initialisations (was 33)
    ({"batch_size": 8, "samples": 4}, 13),  # 3 S + 1 (was 2 S + 1 = 9)
    ({"loss": "cross_entropy", "random_mixing": True, "samples": 8}, 17),
])
def test_estimate_counts_independent_network_groups(kw, groups):
    """Sampled networks with K columns each: the estimate is at least the solver's own check
    (``prediction_bytes`` with ``G`` groups, as ``run_problem`` calls it), which the
    shared-column estimate (used for every ``f0="random"`` before) was not for random
    gossip at its default 16 networks (33 groups)."""
    n, m, k, q = 3000, 200, 10, 4
    arch = nd.models.MLP(hidden=(64, 64), out=k)
    assert pipeline.column_groups(True, **kw) == groups
    est = pipeline.prediction_estimate(arch, n, m, 16, k, q, **kw)
    solver_check = memory.prediction_bytes(n, m, k, q, rates=groups, records=3)
    assert est >= solver_check


def test_column_groups_match_the_solver():
    """Without sampled networks, as ``solver.mixing_groups``: static 1, random mixing S + 1,
    mini-batch squared loss S + 1, mini-batch cross-entropy on a static graph S."""
    assert pipeline.column_groups(False) == 1
    assert pipeline.column_groups(True) == 1  # shared cyclic columns: counted as columns
    assert pipeline.column_groups(False, random_mixing=True) == 65
    assert pipeline.column_groups(False, batch_size=4, samples=8) == 9
    assert pipeline.column_groups(False, batch_size=4, samples=8, loss="cross_entropy") == 8


def test_estimate_counts_kernel_build_and_device_copy():
    """Analytic: 3 N^2 while symmetrising; empirical at B = N: result + 4 block products;
    the solver holds the host kernel and its device copy (2 N^2)."""
    n, m = 10_000, 0
    arch = nd.models.MLP(hidden=(64, 64), out=10)
    kb = 8 * n * n
    ana = pipeline.prediction_estimate(arch, n, m, 16, 10, 4, kernel="analytic",
                                       f0_random=False)  # the mean network (f0 = 0)
    assert ana - memory.RUNTIME_BYTES == 3 * kb + memory.ANALYTIC_BLOCK_BYTES
    # predict's default with the analytic kernel (one random network) needs more: the
    # pooled kernels, the NNGP's Cholesky factor, K + 32 columns
    assert pipeline.prediction_estimate(arch, n, m, 16, 10, 4, kernel="analytic") > ana
    emp = pipeline.prediction_estimate(arch, n, m, 16, 10, 4, kernel="empirical")
    # batch of 1,000 samples here: result + features + forward pass, above the solver's 2 N^2
    assert emp - memory.RUNTIME_BYTES >= 2 * kb
    old = memory.prediction_bytes(n, m, 10, 4, runtime=False)
    assert old >= 2 * kb  # host kernel + device copy (was 1 N^2 before issue 12)


def test_build_problem_refuses_with_what_fits(monkeypatch):
    data = nd.data.synthetic(n_train=3000, n_test=100, dim=8, classes=4, seed=0)
    parts = nd.data.partition(data, 4, seed=0)
    W = nd.graphs.mixing(nd.graphs.topology("ring", 4))
    arch = nd.models.MLP(hidden=(32,), out=4)
    # above the fixed costs (XLA runtime and the reference's eigh buffers, 320 MB)
    monkeypatch.setenv("NTKDYN_MEMORY_LIMIT", "600MB")
    with pytest.raises(memory.ProblemTooLargeError, match=r"at most about \d+ training"):
        pipeline.build_problem(arch, parts, W)
    msg = ""
    try:
        pipeline.build_problem(arch, parts, W)
    except memory.ProblemTooLargeError as exc:
        msg = str(exc)
    fit = int(msg.split("at most about ")[1].split()[0])
    limit = memory.parse_bytes("600MB")
    assert pipeline.prediction_estimate(arch, fit, 100, 8, 4, 4) <= limit
    assert pipeline.prediction_estimate(arch, fit + 1, 100, 8, 4, 4) > limit
    assert 0 < fit < 3000


def test_largest_fitting():
    assert memory.largest_fitting(lambda n: n * n, 100, 50) == 10
    assert memory.largest_fitting(lambda n: n * n, 0, 50) == 0
    assert memory.largest_fitting(lambda n: n, 10**9, 50) == 50
    _ = np


BIG = """
seed = 0
[data]
source = "synthetic"
classes = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
n_train = 200000
n_test = 400
[partition]
agents = 8
[architecture]
depth = 2
width = 256
[training]
lr = 0.1
steps = 10
record_every = 5
"""


def test_validate_refuses_before_training(tmp_path, monkeypatch, capsys):
    """200,000 samples: ``validate`` refuses with what would fit, without training."""
    import ntkdyn.validation.harness as harness
    from ntkdyn.cli import main

    def no_training(*a, **k):  # pragma: no cover - reached only if the check is missing
        raise AssertionError("training started")

    monkeypatch.setattr(harness, "train", no_training)
    monkeypatch.setenv("NTKDYN_MEMORY_LIMIT", "16GB")
    cfg = tmp_path / "big.toml"
    cfg.write_text(BIG)
    assert main(["validate", str(cfg), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "needs about" in err and "at most about" in err and "N=200000" in err
    fit = int(err.split("at most about ")[1].split()[0])
    assert 10_000 < fit < 40_000  # 16 GB: a few 8 N^2 arrays
    assert not (tmp_path / "out").exists()


def test_carried_outputs_are_counted_where_the_solver_carries_them(monkeypatch):
    """The solver's state with carried outputs (``solver.carries_outputs``) has the training
    and test outputs besides alpha: ``prediction_bytes`` adds ``8 x 7 A (R + R_t) C`` and
    the transposed test kernel's blocks ``8 R_t R``, and ``run_problem`` passes the
    solver's own choice to it (many records and agents: carried; few records: not)."""
    from ntkdyn.dynamics import run as run_mod

    n, m, k, q = 400, 50, 10, 8
    kw = dict(records=3, rates=40)  # the solving phase is the peak
    plain = memory.prediction_bytes(n, m, k, q, **kw)
    assert memory.prediction_bytes(n, m, k, q, carried_outputs=True, **kw) - plain == \
        8 * 7 * (q + 1) * (n + m) * k * 40 + 8 * m * n
    seen = []
    real = memory.prediction_bytes
    monkeypatch.setattr(memory, "prediction_bytes",
                        lambda *a, **kw: seen.append(kw["carried_outputs"]) or real(*a, **kw))
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(n, 5))
    problem = nd.make_problem(feats @ feats.T, np.eye(k)[rng.integers(0, k, n)],
                              np.arange(n) % q, nd.graphs.mixing(nd.graphs.topology("ring", q)))
    for steps, carried in ((np.arange(0, 8), True), (np.array([0, 200]), False)):
        run_mod.run_problem(problem, "dgd", [0.01], steps)
        assert seen[-1] is carried


def test_recorded_steps_are_counted(monkeypatch):
    """Each record holds RECORD_ARRAYS metrics per slot and rate (device and host): ten
    million records of 100 agents are 250 GB, refused before the run, naming the steps."""
    few = memory.prediction_bytes(50, 10, 2, 100, records=10**6, runtime=False)
    many = memory.prediction_bytes(50, 10, 2, 100, records=10**7, runtime=False)
    assert many - few == 2 * 8 * memory.RECORD_ARRAYS * (10**7 - 10**6) * 101
    kernel = np.eye(40)
    y = np.ones((40, 1))
    w = np.full((20, 20), 1 / 20)
    monkeypatch.setenv("NTKDYN_MEMORY_LIMIT", "2GB")
    with pytest.raises(memory.ProblemTooLargeError, match="fewer recorded steps"):
        nd.predict_from_kernels(kernel, y, np.arange(40) % 20, w, 0.1, range(0, 10**7, 2))


INIT_PROBE = r"""
import json, re, sys
def st(key):
    return int(re.search(key + r":\s+(\d+)", open("/proc/self/status").read()).group(1)) * 1024
import ntkdyn as nd
from ntkdyn.models import init_bytes
nd.models.init_params(nd.models.MLP(hidden=(8, 8), out=10), 16, 0)  # jax and x64 set up
arch = nd.models.MLP(hidden=(int(sys.argv[1]),) * 2, out=10)
try:
    open("/proc/self/clear_refs", "w").write("5")  # VmHWM := VmRSS
except OSError:
    pass
base = st("VmRSS")
params = nd.models.init_params(arch, 16, 1)
print(json.dumps({"estimate": init_bytes(arch, 16), "peak": st("VmHWM") - base}))
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc (Linux)")
def test_parameter_draw_estimate_against_measured_peak():
    """``init_bytes`` (2.5 x the float64 parameters + 30 MB) against the peak growth of a
    fresh process drawing an MLP of widths 3,000 (9.1 M parameters): measured 1.11 on the
    2-core machine (1.08 at 6,000, 1.19 at 2,000, 1.42 at 12,000)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = env.get("XLA_FLAGS", "").replace(TEST_XLA_FLAGS, "").strip()
    out = subprocess.run([sys.executable, "-c", INIT_PROBE, "3000"], capture_output=True,
                         text=True, env=env, cwd=ROOT, check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert 0.8 <= r["estimate"] / r["peak"] <= 1.6, r


def test_too_wide_network_is_refused_before_drawing_naming_the_width(monkeypatch):
    """Width 100,000 (1e10 parameters) ended in JAX's out-of-memory traceback after the draw
    (found-not-fixed 1 of stop 51); now one error before it, naming the width."""
    monkeypatch.setenv("NTKDYN_MEMORY_LIMIT", "2GB")
    wide = nd.models.MLP(hidden=(100_000, 100_000), out=3)
    with pytest.raises(memory.ProblemTooLargeError,
                       match=r"parameters of the MLP .*\[architecture\] width"):
        nd.models.init_params(wide, 16, 0)
    data = nd.data.synthetic(n_train=24, n_test=6, dim=16, classes=3, seed=0)
    parts = nd.data.partition(data, 2, seed=0)
    w = nd.graphs.mixing(nd.graphs.topology("ring", 2))
    with pytest.raises(memory.ProblemTooLargeError, match="hidden widths"):
        nd.predict(wide, parts, w, lr=0.1, steps=[0, 1], kernel="empirical")
    nd.models.init_params(nd.models.MLP(hidden=(64, 64), out=3), 16, 0)  # small: drawn


def test_validate_refuses_the_widest_network_before_training_any(tmp_path, monkeypatch,
                                                                 capsys):
    """Widths [16, 100000]: the widest network's parameters (1e10) are refused before width
    16 trains (the parameter check ran only when width 100,000 was drawn, after it)."""
    import ntkdyn.validation.harness as harness
    from ntkdyn.cli import main

    def no_training(*a, **k):  # pragma: no cover - reached only if the check is missing
        raise AssertionError("training started")

    monkeypatch.setattr(harness, "train", no_training)
    monkeypatch.setenv("NTKDYN_MEMORY_LIMIT", "16GB")
    cfg = tmp_path / "wide.toml"
    cfg.write_text(BIG.replace("n_train = 200000", "n_train = 64").replace(
        "n_test = 400", "n_test = 16") + "[validation]\nwidths = [16, 100000]\n")
    assert main(["validate", str(cfg), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "parameters of the MLP (hidden widths (100000, 100000)" in err, err
    assert not (tmp_path / "out").exists()
