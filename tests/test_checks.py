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
