"""``validate/run_suite.py`` (the README's agreement tables) runs end to end on a tiny suite."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from conftest import TINY_TOML

ROOT = Path(__file__).resolve().parents[1]


def _run_suite():
    spec = importlib.util.spec_from_file_location("run_suite", ROOT / "validate" / "run_suite.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # about 25 s of CPU (two tiny validations)
def test_run_suite_tiny(tmp_path, capsys):
    """Loads each TOML (``ntkdyn.config`` is not an attribute of the lazy package until
    imported: the script failed with AttributeError), validates two widths and prints the
    tables with one cell per width and the JSON rows."""
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "tiny_dgd.toml").write_text(
        TINY_TOML.replace("steps = 40\nrecord_every = 10", "steps = 4\nrecord_every = 2")
        + "[validation]\nwidths = [16, 32]\n")
    out = tmp_path / "json"
    rc = _run_suite().main(["--suites", str(suite), "--out", str(tmp_path / "out"),
                            "--json", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "| width 16 | width 32 |" in text
    assert "at the horizon (step 4)" in text  # was hard-coded "step 200"
    rows = json.loads(out.read_text())["rows"]
    assert [r["name"] for r in rows] == ["tiny_dgd"]
    assert set(rows[0]["headline"]) == {"16", "32"}
