"""The sharded exact path as 2 processes (``jax.distributed`` over the loopback address).

Each process runs JAX's CPU backend with 2 devices (``XLA_FLAGS``), so the global mesh
has 4 devices of which each process addresses 2; the kernel slabs of the other process's
devices are never built here, and the column sums cross processes through JAX's CPU
collectives (gloo).  This is the code path of a multi-host cluster; the result must
equal the one-process (unsharded) prediction to <= 1e-12 relative.
"""

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

NUM_PROCESSES = 2
DEVICES_PER_PROCESS = 2
METRICS = ("train_outputs", "test_outputs", "train_loss", "test_loss", "param_dist",
           "consensus_dist", "central_dist", "objective")
CASES = [("equal", "dgd"), ("equal", "atc"), ("unequal", "dgd"),
         ("unequal", "gradient_tracking")]

PROBLEM = textwrap.dedent(r'''
import numpy as np
import ntkdyn as nd

def problem():
    rng = np.random.default_rng(0)
    n, k, q = 45, 3, 4                       # 45 samples: uneven over 4 devices
    x = rng.normal(size=(n, 5)); xt = rng.normal(size=(10, 5))
    arch = nd.models.MLP(hidden=(64, 64), out=k)
    kern, ktt = arch.kernel(x), arch.kernel(xt, x)
    y = np.eye(k)[rng.integers(0, k, n)]; yt = np.eye(k)[rng.integers(0, k, 10)]
    w = nd.graphs.mixing(nd.graphs.topology("path", q))
    f0 = 0.1 * rng.normal(size=y.shape)
    agents = {"equal": np.arange(n) % q, "unequal": np.minimum(np.arange(n) // 12, q - 1)}
    return kern, ktt, y, yt, w, f0, agents

def run(kind, algo, devices=None):
    from ntkdyn.prediction import predict_from_kernels
    kern, ktt, y, yt, w, f0, agents = problem()
    return predict_from_kernels(kern, y, agents[kind], w, 0.4, range(0, 31, 5), algorithm=algo,
                                f0_train=f0, kernel_test_train=ktt, y_test=yt,
                                f0_test=np.zeros_like(yt), record_outputs=True,
                                devices=devices)
''')

WORKER = PROBLEM + textwrap.dedent(r'''
import sys
import jax

pid, nproc, port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=nproc,
                           process_id=pid)
from ntkdyn.dynamics import sharding

facts = dict(process_index=jax.process_index(), process_count=jax.process_count(),
             global_devices=len(jax.devices()), local_devices=len(jax.local_devices()))
kern = problem()[0]
slab = sharding.sharded_columns(kern.shape[0], kern.shape[1], lambda r, c: kern[np.ix_(r, c)],
                                sharding.make_mesh())
facts["kernel_fully_addressable"] = bool(slab.is_fully_addressable)
facts["kernel_local_shards"] = len(slab.addressable_shards)
arrays = {}
for kind, algo in CASES:
    traj = run(kind, algo, devices=jax.devices())
    for m in METRICS:
        arrays[f"{kind}/{algo}/{m}"] = np.asarray(getattr(traj, m))
np.savez(out, **arrays, **{f"fact/{k}": v for k, v in facts.items()})
''')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def processes(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("multiprocess")
    script = tmp / "worker.py"
    script.write_text(f"CASES = {CASES!r}\nMETRICS = {METRICS!r}\n" + WORKER)
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(Path(__file__).parents[1]),
               XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} "
                         f"--xla_force_host_platform_device_count={DEVICES_PER_PROCESS}")
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, str(script), str(i), str(NUM_PROCESSES),
                               str(port), str(tmp / f"out{i}.npz")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env, cwd=Path(__file__).parents[1])
             for i in range(NUM_PROCESSES)]
    logs = []
    try:
        for p in procs:
            _, err = p.communicate(timeout=240)
            logs.append(err)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, err in zip(procs, logs, strict=True):
        assert p.returncode == 0, err[-3000:]
    return [dict(np.load(tmp / f"out{i}.npz")) for i in range(NUM_PROCESSES)]


def test_two_processes_form_one_mesh(processes):
    for i, out in enumerate(processes):
        assert int(out["fact/process_index"]) == i
        assert int(out["fact/process_count"]) == NUM_PROCESSES
        assert int(out["fact/global_devices"]) == NUM_PROCESSES * DEVICES_PER_PROCESS
        assert int(out["fact/local_devices"]) == DEVICES_PER_PROCESS
        # each process holds only its own devices' slabs of the kernel
        assert not bool(out["fact/kernel_fully_addressable"])
        assert int(out["fact/kernel_local_shards"]) == DEVICES_PER_PROCESS


@pytest.mark.parametrize("kind, algo", CASES, ids=[f"{k}-{a}" for k, a in CASES])
def test_two_processes_equal_one_process(processes, kind, algo):
    namespace: dict = {}
    exec(PROBLEM, namespace)  # noqa: S102 - the same problem the workers build
    one = namespace["run"](kind, algo)
    for m in METRICS:
        ref = np.asarray(getattr(one, m))
        scale = max(float(np.max(np.abs(ref))), 1e-300)
        for out in processes:  # every process holds the full (replicated) records
            got = out[f"{kind}/{algo}/{m}"]
            assert got.shape == ref.shape, (m, got.shape, ref.shape)
            err = float(np.max(np.abs(got - ref))) / scale
            assert err <= 1e-12, (kind, algo, m, err)
