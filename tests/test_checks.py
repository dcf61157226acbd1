"""The shared input checks (ntkdyn/_utils/checks.py), through the public entry points."""

import numpy as np
import pytest

import ntkdyn as nd


def _problem_args():
    x = np.random.default_rng(0).normal(size=(8, 3))
    return x @ x.T, np.ones((8, 1)), np.full((2, 2), 0.5)


@pytest.mark.parametrize("agent", [
    np.array(["a", "b"] * 4),                # strings: np.mod raised a raw TypeError
    np.array([True, False] * 4),             # booleans: silently agents 1 and 0
    np.array([0, None] * 4, dtype=object),   # None: np.mod raised a raw TypeError
    np.array([0, "b"] * 4, dtype=object),
    np.array([0, True] * 4, dtype=object),
    np.array([0.0, 0.5] * 4),                # non-integral floats (refused before too)
    np.array([0.0, np.inf] * 4),
    np.array([0, 1j] * 4),
])
def test_non_integer_agent_indices_name_agent(agent):
    kernel, y, w = _problem_args()
    with pytest.raises(ValueError) as err:
        nd.make_problem(kernel, y, agent, w)
    msg = str(err.value)
    assert msg.startswith("agent: expected integer agent indices in [0, 2)"), msg
    assert "got" in msg, msg


@pytest.mark.parametrize("agent", [np.array([0, 1] * 4, dtype=object),
                                   np.array([0.0, 1.0] * 4), [0, 1] * 4,
                                   np.array([0, 1] * 4, dtype=np.uint8)])
def test_integer_valued_agent_indices_are_accepted(agent):
    kernel, y, w = _problem_args()
    problem = nd.make_problem(kernel, y, agent, w)
    assert problem.offsets == (0, 4, 8)


@pytest.mark.parametrize("lr", [True, np.True_, np.array([True, True]), [True, 0.5],
                                np.array(True)])
def test_boolean_learning_rate_names_lr(lr):
    """``lr=True`` was taken as 1.0 (bool is an int; numpy bools convert to 1.0)."""
    kernel, y, w = _problem_args()
    problem = nd.make_problem(kernel, y, np.arange(8) % 2, w)
    with pytest.raises(ValueError) as err:
        nd.stability(problem, "dgd", lr)
    msg = str(err.value)
    assert msg.startswith("lr: expected a positive number or an array of 2 per-agent rates"
                          ", got a boolean"), msg


def test_boolean_rate_in_a_sweep_names_its_position():
    kernel, y, w = _problem_args()
    with pytest.raises(ValueError, match=r"^lrs\[1\]: expected a positive number .* got a "
                                         r"boolean"):
        nd.sweep_from_kernels(kernel, y, np.arange(8) % 2, w, [0.1, True], steps=3)


# ----------------------------------------------------------------- recorded steps
@pytest.mark.parametrize("steps", [10**12, [0, 10**15], range(0, 10**12, 10**9)])
def test_horizon_beyond_the_step_limit_names_steps(steps):
    """``steps=10**12`` raised a bare MemoryError (``list(range(...))``) and
    ``[0, 10**15]`` ran the step-by-step recursion for ever."""
    kernel, y, w = _problem_args()
    with pytest.raises(ValueError, match=r"^steps: expected steps at most 1,000,000,000,"):
        nd.predict_from_kernels(kernel, y, np.arange(8) % 2, w, 0.1, steps)


def test_too_many_recorded_steps_name_steps_before_materialising():
    kernel, y, w = _problem_args()
    with pytest.raises(ValueError, match=r"^steps: expected at most 10,000,000 recorded "
                                         r"steps, got 100,000,001"):
        nd.predict_from_kernels(kernel, y, np.arange(8) % 2, w, 0.1, 10**8)


def test_gradient_flow_beyond_the_substep_limit_names_times():
    """The closed-form flow of the squared loss takes ``beta t / 3`` Taylor substeps: a
    time of 10^12 ran for ever; times themselves have no step limit (1e3 is fine)."""
    kernel, y, w = _problem_args()
    with pytest.raises(ValueError, match=r"^times: the gradient flow to t = 1e\+12 needs "
                                         r"[0-9,]+ Taylor substeps, more than 1,000,000,000"):
        nd.predict_from_kernels(kernel, y, np.arange(8) % 2, w, 0.1, [0.0, 1e12],
                                continuous=True)


# ----------------------------------------------------------------- arrays and flags
def test_targets_without_columns_name_y_train():
    """``y_train`` of shape (8, 0) was numpy's 'argmax of an empty sequence'."""
    kernel, _, w = _problem_args()
    with pytest.raises(ValueError, match=r"^y_train: expected at least one output column, "
                                         r"got shape \(8, 0\)"):
        nd.make_problem(kernel, np.ones((8, 0)), np.arange(8) % 2, w)


@pytest.mark.parametrize("which", ["kernel", "y"])
def test_complex_arrays_are_refused_not_truncated(which):
    """A complex kernel was cast to its real part with a ComplexWarning."""
    kernel, y, w = _problem_args()
    args = (kernel + 1e-3j, y) if which == "kernel" else (kernel, y + 0j)
    name = "kernel_train" if which == "kernel" else "y_train"
    with pytest.raises(ValueError, match=rf"^{name}: expected real values, got complex"):
        nd.make_problem(*args, np.arange(8) % 2, w)


@pytest.mark.parametrize("flag", ["continuous", "record_outputs"])
@pytest.mark.parametrize("value", ["yes", 1, None])
def test_flags_must_be_booleans(flag, value):
    """``continuous="yes"`` ran the discrete recursion as if it were False."""
    kernel, y, w = _problem_args()
    with pytest.raises(ValueError, match=rf"^{flag}: expected True or False, got {value!r}"):
        nd.predict_from_kernels(kernel, y, np.arange(8) % 2, w, 0.1, 3, **{flag: value})


def test_negative_seed_is_refused_as_in_the_config():
    kernel, y, w = _problem_args()
    with pytest.raises(ValueError, match=r"^seed: expected an integer >= 0, got -1"):
        nd.predict_from_kernels(kernel, y, np.arange(8) % 2, w, 0.1, 3, batch_size=2,
                                seed=-1)


@pytest.mark.parametrize("make", [lambda g: nd.graphs.random_edges(g, 0.5),
                                  nd.graphs.one_random_edge])
def test_gossip_on_a_topology_name_says_graph(make):
    """``random_edges('ring', 0.5)`` said "could not convert string to float: 'ring'"."""
    with pytest.raises(ValueError, match=r"^graph: expected a networkx graph or a square "
                                         r"adjacency matrix, got str 'ring' \(build one with "
                                         r"nd.graphs.topology\('ring', Q\)\)"):
        make("ring")
