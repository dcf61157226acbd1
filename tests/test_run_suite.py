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


def test_table_and_slopes_for_any_metric():
    """``--metrics``: the cross-entropy suite tabulates the test accuracy; its slope is the
    least-squares one over the widths the harness fitted (width 64 left out here), and the
    table has one block per metric asked for (the test loss and the parameter distance
    were hard-coded)."""
    rs = _run_suite()
    widths = [64, 256, 1024]
    headline = {str(w): {k: {"test_loss": 0.1 * (w / 64) ** -0.5,
                             "test_acc": 0.02 * (w / 64) ** -1.0 * (10.0 if w == 64 else 1.0)}
                         for k in ("analytic", "empirical")} for w in widths}
    slopes = rs.slopes_of(widths, headline, {"analytic": widths, "empirical": [256, 1024]},
                          ("test_loss", "test_acc"))
    assert slopes["test_loss vs analytic"] == pytest.approx(-0.5, abs=1e-12)
    assert slopes["test_acc vs empirical"] == pytest.approx(-1.0, abs=1e-12)  # 64 left out
    assert slopes["test_acc vs analytic"] < -1.5  # the outlier at 64 is fitted
    row = {"topology": "ring", "algorithm": "dgd, cross-entropy", "headline": headline,
           "slopes": slopes}
    text = rs.table([row], widths, "headline", 200, ("test_loss", "test_acc"))
    assert "network-mean test accuracy" in text and "network-mean test loss" in text
    assert "||theta" not in text
    acc_block = text.split("test accuracy")[1]
    assert ("| ring | DGD, CROSS-ENTROPY | 20.00% / 20.00% | 0.50% / 0.50% | 0.12% / 0.12% "
            "| -1.83 / -1.00 |") in acc_block


def test_metrics_argument_is_checked(capsys):
    with pytest.raises(SystemExit):
        _run_suite().main(["--metrics", "test_accuracy"])
    assert "--metrics" in capsys.readouterr().err
