"""Shared fixtures: a small MLP linearised by brute force, in parameter space.

The reference implementations here are deliberately independent of the
library: plain numpy over an explicit Jacobian, written from the update rules
in DESIGN.md, so that agreement with the kernel-space solver is evidence.
"""

# ruff: noqa: E402  (the environment below is set before jax is imported)
from __future__ import annotations

import os
from dataclasses import dataclass

# Most test programs are small and compiled once: XLA's optimisation passes cost more
# than they save there (tests/test_lowrank.py on 2 cores: 130 s -> 102 s; the suite under
# pytest -n 2: 18.3 -> 15.0 min).  Set before jax is imported, so that the subprocesses the
# tests start (sharded meshes, scripts) inherit it; tests/test_memory.py removes it from
# its probes' environment, which measure the default compilation's memory.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
# XLA:CPU's fusion emitters (its default code generator for fused loops) spend about twice
# as long compiling the tests' programs as the older loop emitters, and compiling is most of
# the suite's time (tests/test_lowrank_random.py on one core, jax 0.10: 211 programs,
# 30.2 s -> 16.1 s of backend compilation, 42 -> 25 s in all; tests/test_lowrank_gossip.py
# under -n 2: 124 -> 88 s; measured 2026-11-30).  For the tests only, and their
# subprocesses; test_memory's probes remove it with the flag above.
TEST_XLA_FLAGS = "--xla_cpu_use_fusion_emitters=false"
if "xla_cpu_use_fusion_emitters" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {TEST_XLA_FLAGS}".strip()

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

import ntkdyn  # noqa: F401  (float64)


def strict_json(text: str):
    """``json.loads`` that refuses what standard JSON (RFC 8259) does not have: bare
    ``NaN``, ``Infinity`` and ``-Infinity``, which Python writes and reads by default but
    ``jq`` and most other parsers reject."""
    import json

    def refuse(name):
        raise ValueError(f"not standard JSON: bare {name}")

    return json.loads(text, parse_constant=refuse)


def _mlp_apply(params, x, w_std=1.4, b_std=0.1):
    h = x
    for i, (w, b) in enumerate(params):
        z = (w_std / np.sqrt(h.shape[1])) * h @ w + b_std * b
        h = jax.nn.relu(z) if i < len(params) - 1 else z
    return h


@dataclass
class LinearisedNet:
    """f(x; theta) = f0(x) + J(x) (theta - theta0) for a small ReLU MLP."""

    x: np.ndarray
    x_test: np.ndarray
    y: np.ndarray
    y_test: np.ndarray
    f0: np.ndarray  # (N, K)
    f0_test: np.ndarray
    jac: np.ndarray  # (N*K, P) sample-major rows
    jac_test: np.ndarray
    agent: np.ndarray

    @property
    def kernel_full(self):
        return self.jac @ self.jac.T

    @property
    def kernel_test_full(self):
        return self.jac_test @ self.jac.T

    def grad(self, q: int, delta: np.ndarray) -> np.ndarray:
        """grad L_q at theta0 + delta, L_q = 1/(2 N_q) sum_{i in q} ||f_i - y_i||^2."""
        k = self.y.shape[1]
        rows = np.repeat(self.agent == q, k)
        r = (self.f0.ravel() + self.jac @ delta - self.y.ravel())[rows]
        return self.jac[rows].T @ r / np.sum(self.agent == q)

    def outputs(self, delta: np.ndarray, test: bool = False) -> np.ndarray:
        jac, f0 = (self.jac_test, self.f0_test) if test else (self.jac, self.f0)
        return (f0.ravel() + jac @ delta).reshape(f0.shape)


def brute_force(net: LinearisedNet, w: np.ndarray, lr, algorithm: str, steps: int) -> dict:
    """Train the linearised net in parameter space; record everything each step."""
    q_count = w.shape[0]
    lr = np.broadcast_to(np.asarray(lr, float), (q_count,))
    p = net.jac.shape[1]
    th = np.zeros((q_count, p))
    thc = np.zeros(p)

    def grads(t):
        return np.stack([net.grad(q, t[q]) for q in range(q_count)])

    rec = {k: [] for k in ("out", "out_test", "param", "cons", "central", "train_loss",
                           "test_loss", "central_out")}
    for _ in range(steps + 1):
        out = np.stack([net.outputs(th[q]) for q in range(q_count)])
        out_t = np.stack([net.outputs(th[q], test=True) for q in range(q_count)])
        rec["out"].append(out)
        rec["out_test"].append(out_t)
        rec["central_out"].append(net.outputs(thc))
        rec["param"].append(np.linalg.norm(th, axis=1))
        rec["cons"].append(np.linalg.norm(th - th.mean(0), axis=1))
        rec["central"].append(np.linalg.norm(th - thc, axis=1))
        rec["train_loss"].append(0.5 * ((out - net.y) ** 2).sum(-1).mean(-1))
        rec["test_loss"].append(0.5 * ((out_t - net.y_test) ** 2).sum(-1).mean(-1))
        if algorithm == "dgd":
            th = w @ th - lr[:, None] * grads(th)
        elif algorithm == "atc":
            th = w @ (th - lr[:, None] * grads(th))
        elif algorithm == "cta":
            ph = w @ th
            th = ph - lr[:, None] * grads(ph)
        else:
            raise ValueError(algorithm)
        gc = sum(net.grad(q, thc) for q in range(q_count)) / q_count
        thc = thc - lr.mean() * gc
    return {k: np.stack(v) for k, v in rec.items()}


def make_linearised_net(n=18, n_test=6, d=4, k=3, q_count=4, width=12, seed=0) -> LinearisedNet:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    x_test = rng.normal(size=(n_test, d))
    y = np.eye(k)[rng.integers(0, k, n)]
    y_test = np.eye(k)[rng.integers(0, k, n_test)]
    keys = jax.random.split(jax.random.PRNGKey(seed), 3)
    dims = [d, width, width, k]
    params = [(jax.random.normal(keys[i], (dims[i], dims[i + 1])),
               jax.random.normal(jax.random.fold_in(keys[i], 1), (dims[i + 1],)))
              for i in range(3)]
    flat, unravel = jax.flatten_util.ravel_pytree(params)

    def f(theta, xx):
        return _mlp_apply(unravel(theta), xx).ravel()

    # scale J by 1/sqrt(10) (a reparameterisation) so that rates ~0.3 are stable here
    jac = np.asarray(jax.jacobian(f)(flat, jnp.asarray(x))) / np.sqrt(10.0)
    jac_t = np.asarray(jax.jacobian(f)(flat, jnp.asarray(x_test))) / np.sqrt(10.0)
    agent = rng.permutation(np.arange(n) % q_count)  # unsorted on purpose
    return LinearisedNet(x, x_test, y, y_test, np.asarray(f(flat, x)).reshape(n, k),
                         np.asarray(f(flat, x_test)).reshape(n_test, k), jac, jac_t, agent)


@pytest.fixture(scope="session")
def golden_kernels() -> dict:
    """The neural-tangents golden problem (``tests/data/nt_golden_dynamics.npz``: 12 train /
    6 test, K = 3) with ntkdyn's analytic NNGP (train and test pooled) and NTK blocks."""
    from pathlib import Path

    from ntkdyn.kernels.analytic import analytic_kernels

    with np.load(Path(__file__).parent / "data" / "nt_golden_dynamics.npz") as data:
        g = {k: data[k] for k in data.files}
    x = np.concatenate([g["inputs/x_train"], g["inputs/x_test"]])
    w_std, b_std, depth = g["kernels/settings"]
    nngp, ntk = analytic_kernels(x, hidden_layers=int(depth), W_std=w_std, b_std=b_std)
    n = g["inputs/x_train"].shape[0]
    return {"nngp": nngp, "k": ntk[:n, :n], "kt": ntk[n:, :n], "n": n,
            "y": g["inputs/y_train"], "y_test": g["inputs/y_test"]}


@pytest.fixture(scope="session")
def net() -> LinearisedNet:
    return make_linearised_net()


def assert_fields_close(expected, got, fields, tol: float = 1e-10) -> None:
    """Every field of ``fields`` that ``expected`` records has the same shape in ``got`` and
    agrees to ``tol`` relative to ``max(1, max|expected|)``."""
    for f in fields:
        a, b = getattr(expected, f), getattr(got, f)
        if a is None:
            continue
        assert a.shape == b.shape, f
        assert np.max(np.abs(a - b)) <= tol * max(1.0, np.abs(a).max()), f


def rel_err(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def interrupt_after_checkpoints(monkeypatch, count: int):
    """Make :mod:`ntkdyn.training.trainer` raise ``KeyboardInterrupt`` (as Ctrl-C would) right after
    its ``count``-th checkpoint write; returns a function that removes the interruption."""
    import ntkdyn.training.trainer as train_mod

    real, calls = train_mod._save_checkpoint, []

    def interrupted(*args, **kwargs):
        real(*args, **kwargs)
        calls.append(1)
        if len(calls) == count:
            raise KeyboardInterrupt

    monkeypatch.setattr(train_mod, "_save_checkpoint", interrupted)
    return lambda: monkeypatch.setattr(train_mod, "_save_checkpoint", real)


#: A tiny ``ntkdyn`` TOML (3 digits classes, 60 / 30 samples, 3 agents on a ring, depth-1
#: width-64 MLP, 40 steps): the command-line tests append or edit sections of it.
TINY_TOML = """
seed = 1
[data]
source = "digits"
classes = [0, 1, 2]
n_train = 60
n_test = 30
[partition]
agents = 3
[topology]
name = "ring"
[architecture]
depth = 1
width = 64
[training]
lr = 0.3
steps = 40
record_every = 10
"""


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_code():
    """Drop JAX's compiled executables after each test module: the suite compiles several
    thousand programs in one process, and keeping them all grows its memory without bound."""
    yield
    jax.clear_caches()
