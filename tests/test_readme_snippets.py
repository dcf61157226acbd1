"""README.md's Python examples run, at a reduced size: the blocks a user copies first (the
Python API, cross-entropy, mini-batch SGD, the schedules and gossip, the low-rank path) are
read from the README, shrunk by the substitutions below (fewer samples, steps and sampled
sequences; every substitution must apply, so a changed README is noticed) and executed
after the README's own set-up lines (data, partition, mixing, architecture).  A snippet
that uses an attribute the returned type lacks (``.expected`` on a one-random-network
trajectory, found by a fresh-eyes audit) fails here."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: (README text, reduced text): sizes only, never what a line calls
SHRINK = [
    ("n_train=800, n_test=400", "n_train=96, n_test=48"),
    ('agents=8, scheme="iid"', 'agents=4, scheme="iid"'),
    ('topology("ring", 8)', 'topology("ring", 4)'),
    ('topology("star", 8)', 'topology("star", 4)'),
    ("hidden=(1024, 1024)", "hidden=(64, 64)"),
    ("range(0, 2001, 20)", "range(0, 41, 20)"),
    ("range(0, 101, 5)", "range(0, 11, 5)"),
    ("range(0, 1001, 20)", "range(0, 41, 20)"),
    ("np.linspace(0, 200, 41)", "np.linspace(0, 20, 5)"),
    ("samples=64", "samples=4"),
    ("batch_size=32", "batch_size=8"),
    ("max_rank=512", "max_rank=24"),
    ('"run.npz"', 'str(TMP / "run.npz")'),
]


def python_blocks() -> dict[str, str]:
    """The README's ```python blocks, keyed by the heading above each (numbered when a
    heading has several)."""
    out, heading, block, seen = {}, "", None, {}
    for line in (ROOT / "README.md").read_text().splitlines():
        if block is None and re.match(r"^#{1,6} ", line):
            heading = line.lstrip("#").strip()
        elif block is None and line.startswith("```python"):
            block = []
        elif block is not None and line.startswith("```"):
            seen[heading] = seen.get(heading, 0) + 1
            out[f"{heading} #{seen[heading]}"] = "\n".join(block)
            block = None
        elif block is not None:
            block.append(line)
    return out


BLOCKS = python_blocks()
SETUP_BLOCK = "Python API #1"
RUN = [SETUP_BLOCK,
       "Cross-entropy loss (discrete steps and gradient flow) #1",
       "Mini-batch SGD (sampled batch sequences, mean and band) #1",
       "More algorithms: local steps, time-varying and random gossip, gradient tracking, "
       "EXTRA, momentum #1",
       "Data-set scale: the low-rank path #1"]
#: lines not run: they are slow at any size or need files (named, so that they stay few)
SKIP_LINES = ("width_for(", "nd.check(")


def shrink(text: str, used: set) -> str:
    for old, new in SHRINK:
        if old in text:
            used.add(old)
            text = text.replace(old, new)
    return "\n".join(line for line in text.splitlines()
                     if not any(s in line for s in SKIP_LINES))


def setup_lines() -> str:
    """The set-up of the Python API block: imports through the architecture."""
    lines = BLOCKS[SETUP_BLOCK].splitlines()
    end = next(i for i, line in enumerate(lines) if line.startswith("arch"))
    return "\n".join(lines[: end + 1])


def test_the_blocks_are_found_and_every_substitution_applies():
    missing = [name for name in RUN if name not in BLOCKS]
    assert not missing, f"README blocks not found (renamed headings?): {missing}; " \
                        f"found {list(BLOCKS)}"
    used: set = set()
    for name in RUN:
        shrink(BLOCKS[name], used)
    shrink(setup_lines(), used)
    assert {old for old, _ in SHRINK} <= used, {old for old, _ in SHRINK} - used


@pytest.mark.parametrize("name", RUN)
def test_readme_block_runs(name, tmp_path, monkeypatch):
    import numpy as np

    monkeypatch.chdir(tmp_path)
    used: set = set()
    code = shrink(setup_lines(), used) + "\n" + shrink(BLOCKS[name], used)
    if name == SETUP_BLOCK:
        code = shrink(BLOCKS[name], used)
    namespace = {"np": np, "TMP": tmp_path}
    exec(compile(code, f"README.md: {name}", "exec"), namespace)  # noqa: S102
