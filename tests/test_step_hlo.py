"""The compiled solver step makes no state-sized concatenation (issue 15 cost).

XLA:CPU copies a concatenation along the state's minor axis at under 1 GB/s (67-83 ms for
42 MB measured, against 9 ms for the kernel product it fed), and its dot merger creates one
when two products share the kernel operand (the agents' and the carried centralised slot's).
The step of a 64-sequence SGD run was dominated by it.  Checked here on the optimised HLO of
one ATC step with mini-batches, the carried reference and sampled sequences: no
``concatenate`` whose result has as many elements as the agents' columns, and the products
still agree with the plain formula to 1e-12.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np

import ntkdyn as nd
from ntkdyn.algorithms import get_algorithm
from ntkdyn.dynamics import solver


def _problem():
    data = nd.data.synthetic(n_train=64, n_test=16, dim=8, classes=3, seed=0)
    parts = nd.data.partition(data, agents=4, scheme="iid", seed=0)
    w = nd.graphs.mixing(nd.graphs.topology("ring", 4))
    return nd.build_problem(nd.models.MLP(hidden=(32,), out=3), parts, w)


def _step(problem, samples=8, batch=4):
    alg = get_algorithm("atc")
    groups, expected = solver.mixing_groups(problem, samples, batch)
    lrs = np.tile(np.full((1, 4), 0.5), (groups, 1))
    data = solver.device_data(problem, lrs, central=True, reference="carried")
    batcher = solver._add_batches(data, problem, samples, batch, 0, expected)
    cols = groups * problem.num_outputs

    def step(d, x, t):
        ops = solver._operators_at(d, t, algorithm=alg, batcher=batcher, sampler=None,
                                   loss="mse", columns=cols, offsets=problem.offsets,
                                   rows_per_sample=1, central=True)
        return ops.grad(x)

    x = jax.random.normal(jax.random.PRNGKey(0), (5, problem.kernel.shape[0], cols))
    return jax.jit(step), data, x


def test_step_has_no_state_sized_concatenation():
    problem = _problem()
    step, data, x = _step(problem)
    text = step.lower(data, x, jnp.asarray(2.0)).compile().as_text()
    agents_cols = 4 * x.shape[1] * x.shape[2]
    for m in re.finditer(r"= f64\[([0-9,]*)\]\{[^}]*\} concatenate\(", text):
        size = int(np.prod([int(v) for v in m.group(1).split(",") if v]))
        assert size < agents_cols, f"state-sized concatenation in the step: {m.group(0)}"


def test_split_products_equal_the_plain_gradient():
    """The carried slot's gradient (its own product) equals ``D (Theta x_c + f_0 - Y)`` on
    the union of the agents' batches, and agent ``q``'s equals its masked residual, to
    1e-12 relative."""
    problem = _problem()
    step, data, x = _step(problem)
    t = jnp.asarray(2.0)
    g = np.asarray(step(data, x, t))
    theta = np.asarray(problem.kernel)
    res = np.asarray(data["residual"])
    cols = x.shape[2]
    batcher_w = np.asarray(solver._batch_at(
        data, t, batcher=solver._add_batches({}, problem, 8, 4, 0, True), grads_per_step=1,
        rows_per_sample=1, columns=cols)(0))
    xn = np.asarray(x)
    off = problem.offsets
    for q in range(4):
        s, e = off[q], off[q + 1]
        want = (theta[s:e] @ xn[q] + res[s:e]) * batcher_w[s:e]
        assert np.max(np.abs(g[q, s:e] - want)) <= 1e-12 * np.max(np.abs(want))
        assert np.all(g[q, :s] == 0) and np.all(g[q, e:] == 0)
    want_c = (theta @ xn[4] + res) * batcher_w / 4
    assert np.max(np.abs(g[4] - want_c)) <= 1e-12 * np.max(np.abs(want_c))
