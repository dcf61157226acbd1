"""``agreement.band_coverage``: the fraction of records at which an observed curve lies
inside the predicted 5-95 % band of sampled sequences (issue 15, mini-batch SGD)."""

from __future__ import annotations

import numpy as np
import pytest

from ntkdyn.validation.agreement import band_coverage


def test_band_coverage_counts_records_inside_the_quantiles():
    # 101 sequences with values 0..100 at every record: the 5-95 % band is [5, 95]
    samples = np.tile(np.arange(101.0)[:, None], (1, 5))
    samples[:, 0] = 1.0  # record 0: every sequence equal (zero-width band)
    observed = np.array([3.0, 50.0, 96.0, 5.0, 4.9])
    # record 0 skipped; inside at 50 and 5 (the boundary counts), outside at 96 and 4.9
    assert band_coverage(samples, observed) == pytest.approx(0.5, abs=1e-15)
    assert band_coverage(samples, observed, skip=0) == pytest.approx(0.4, abs=1e-15)
    assert band_coverage(samples, observed, 0.0, 1.0) == pytest.approx(1.0, abs=1e-15)


def test_band_coverage_of_a_sample_is_about_the_band_width():
    """An observed curve drawn like the samples lies inside the 5-95 % band about 90 % of
    the time (1000 records, 400 sequences: within 0.05 of 0.9)."""
    rng = np.random.default_rng(0)
    samples = rng.standard_normal((400, 1001))
    observed = rng.standard_normal(1001)
    assert abs(band_coverage(samples, observed) - 0.9) < 0.05


@pytest.mark.parametrize(("kwargs", "name"), [
    ({"samples": np.zeros(4)}, "samples"), ({"samples": np.zeros((3, 5))}, "samples"),
    ({"low": 0.9, "high": 0.1}, "low/high"), ({"skip": -1}, "skip")])
def test_band_coverage_errors_name_the_argument(kwargs, name):
    args = {"samples": np.zeros((3, 4)), "observed": np.zeros(4), **kwargs}
    with pytest.raises(ValueError, match=name):
        band_coverage(**args)


@pytest.mark.slow  # about 20 s of CPU (one tiny prediction and training)
def test_sgd_band_coverage_script_runs(tmp_path, capsys):
    """``validate/sgd_band_coverage.py`` (the README's coverage table) runs end to end and
    its figures are fractions; sequence 0 of the prediction lies inside its own band at
    some record (it is one of the sequences the band is made of)."""
    import importlib.util
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("cov", root / "validate" /
                                                  "sgd_band_coverage.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "cov.json"
    assert module.main(["--widths", "16", "--seeds", "1", "--steps", "6", "--record-every",
                        "2", "--samples", "8", "--batch", "4", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| 16 |" in text
    row = json.loads(out.read_text())["rows"][0]
    for key in ("real_mean", "real_agents", "seq0_mean"):
        assert 0.0 <= row[key] <= 1.0
    assert row["seq0_mean"] > 0.0
    assert row["real_vs_seq0"] < 0.5  # width 16, 6 steps: the real network is near


@pytest.mark.slow  # about 30 s of CPU (one tiny prediction with width draws, one training)
def test_sgd_band_coverage_default_mode_runs(tmp_path, capsys):
    """``--band default`` (issue 15): the joint init+batch band and the calibrated band of
    the default prediction against a real network trained with its own seed; the figures
    are fractions, the calibrated band is that of the default mini-batch prediction with
    ``width=n``, and the config's data seed is kept (the real network's shards are the
    prediction's)."""
    import importlib.util
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("cov2", root / "validate" /
                                                  "sgd_band_coverage.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "cov.json"
    assert module.main(["--band", "default", "--widths", "32", "--seeds", "1", "--steps",
                        "6", "--record-every", "2", "--samples", "4", "--width-samples",
                        "2", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| joint init+batch (default) | 32 |" in text
    assert "| calibrated, width=n | 32 |" in text
    row = json.loads(out.read_text())["rows"][0]
    for key in ("joint_agents", "joint_mean", "calibrated_agents", "calibrated_mean"):
        assert 0.0 <= row[key] <= 1.0
    assert row["calibrated_width_at_horizon"] > 0.0
    assert row["joint_width_at_horizon"] > 0.0
