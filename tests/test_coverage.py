"""Coverage of a band by real networks (``ntkdyn.validation.coverage``) and the script
``validate/coverage.py`` that measures it (issue 14, "calibration, honestly")."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ntkdyn.validation.coverage import (
    CALIBRATED_C,
    add_width_band,
    band_from_draws,
    calibrated_band,
    calibrated_factor,
    coverage,
    final_coverage,
    fit_widening,
    fit_widening_law,
    required_factors,
    widen,
    widening_factor,
)

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("coverage_script",
                                                  ROOT / "validate" / "coverage.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _constructed():
    """Band [0, 2] with median 1 at every (t, q), T = 3, Q = 2; 2 seeds.  Records t >= 1:
    8 points, of which 0.0 and 2.0 (the bounds, inside), 1.5 (inside), 2.5 (above), -1.0
    (below), nan (outside), 1.0, 0.5 (inside): 5 of 8 inside."""
    lo, mid, hi = np.zeros((3, 2)), np.ones((3, 2)), np.full((3, 2), 2.0)
    real = np.empty((2, 3, 2))
    real[:, 0] = 9.0                       # t = 0: outside, counted only with first=0
    real[0, 1:] = [[0.0, 2.0], [1.5, 2.5]]
    real[1, 1:] = [[-1.0, np.nan], [1.0, 0.5]]
    return real, lo, mid, hi


def test_coverage_counts_a_constructed_case():
    """5 of the 8 points at t >= 1 are inside (bounds included, NaN outside); with the
    t = 0 records (all outside) 5 of 12."""
    real, lo, mid, hi = _constructed()
    assert coverage(real, lo, hi) == pytest.approx(5 / 8, abs=1e-15)
    assert coverage(real, lo, hi, first=0) == pytest.approx(5 / 12, abs=1e-15)


def test_required_factors_and_widening_of_the_constructed_case():
    """Factors |x - 1| / 1: 1, 1, 0.5, 1.5, 2, inf, 0, 0.5; the 5/8-quantile is 1 (the
    band itself), 7/8 needs c = 2, and the widened band's coverage is the fraction of
    factors <= c."""
    real, lo, mid, hi = _constructed()
    r = required_factors(real, lo, mid, hi)
    np.testing.assert_array_equal(np.sort(r), [0, 0.5, 0.5, 1, 1, 1.5, 2, np.inf])
    assert fit_widening([r], 5 / 8) == pytest.approx(1.0, rel=1e-11)
    assert fit_widening([r[:4], r[4:]], 7 / 8) == pytest.approx(2.0, rel=1e-11)
    assert fit_widening([r], 0.99) == np.inf
    for c in (0.5, 1.0, 1.5, 2.0, 3.0):
        wlo, whi = widen(lo, mid, hi, c)
        assert coverage(real, wlo, whi) == pytest.approx(np.mean(r <= c), abs=1e-15)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), target=st.floats(0.05, 0.95))
def test_fitted_factor_is_the_smallest_that_reaches_the_target(seed, target):
    """On random asymmetric bands and points, the fitted ``c`` covers >= target and any
    smaller factor (the next lower required factor) covers less."""
    rng = np.random.default_rng(seed)
    lo = -rng.uniform(0.1, 1.0, (4, 3))
    hi = rng.uniform(0.1, 2.0, (4, 3))
    mid = np.zeros((4, 3))
    real = rng.normal(0, 1.5, (5, 4, 3))
    c = fit_widening([required_factors(real, lo, mid, hi)], target)
    wlo, whi = widen(lo, mid, hi, c)
    assert coverage(real, wlo, whi) >= target - 1e-12
    smaller = np.sort(required_factors(real, lo, mid, hi))
    smaller = smaller[smaller < c / (1 + 1e-9)]           # below the fitted order statistic
    if smaller.size:
        wlo, whi = widen(lo, mid, hi, smaller[-1])
        assert coverage(real, wlo, whi) < target


def test_add_width_band_adds_variances_and_shifts_the_centre():
    """Init draws uniform on a grid (5-95 % half-widths 0.9 and 0.9 about 0); width draws
    with half-width 1.2 and mean 0.5: band 0.5 -/+ sqrt(0.9^2 + 1.2^2) = 0.5 -/+ 1.5.
    A zero-spread width band at the init mean leaves the init band unchanged."""
    init = np.linspace(-1, 1, 101)[:, None, None] * np.ones((1, 2, 3))
    width = np.linspace(-1, 1, 101)[:, None, None] * (1.2 / 0.9) + 0.5
    width = width * np.ones((1, 2, 3))
    lo, mid, hi = add_width_band(init, width)
    np.testing.assert_allclose(mid, 0.5, atol=1e-12)
    np.testing.assert_allclose(lo, 0.5 - 1.5, atol=1e-12)
    np.testing.assert_allclose(hi, 0.5 + 1.5, atol=1e-12)
    lo, mid, hi = add_width_band(init, np.zeros((4, 2, 3)))
    ilo, imid, ihi = band_from_draws(init)
    np.testing.assert_allclose((lo, mid, hi), (ilo, imid, ihi), atol=1e-12)


def test_add_width_band_measures_the_shift_against_paired_draws():
    """With ``paired_draws`` (the infinite-width prediction from the width samples' own
    draws, mean 0.3 here) the centre moves by ``mean(width) - mean(paired)`` = 0.2, not by
    ``mean(width) - mean(init)`` = 0.5; the half-widths are unchanged; a wrong shape is a
    ``ValueError`` naming ``paired_draws``."""
    init = np.linspace(-1, 1, 101)[:, None, None] * np.ones((1, 2, 3))
    width = np.linspace(-1, 1, 101)[:, None, None] * (1.2 / 0.9) + 0.5
    width = width * np.ones((1, 2, 3))
    paired = np.full((4, 2, 3), 0.3)
    lo, mid, hi = add_width_band(init, width, paired_draws=paired)
    np.testing.assert_allclose(mid, 0.2, atol=1e-12)
    np.testing.assert_allclose((lo, hi), (0.2 - 1.5 + 0 * lo, 0.2 + 1.5 + 0 * hi), atol=1e-12)
    with pytest.raises(ValueError, match="paired_draws"):
        add_width_band(init, width, paired_draws=np.zeros((4, 3, 3)))


def test_calibrated_band_is_the_combined_band_widened_by_the_fitted_factor():
    """``calibrated_band`` = :func:`add_width_band` (5-95 %, paired draws) widened by
    ``CALIBRATED_C`` about its centre (exactly, 1e-12); the fitted constant is a sane
    factor (0.5-2); a bad width is a ``ValueError`` naming ``width``."""
    rng = np.random.default_rng(4)
    init = rng.standard_normal((200, 3, 2))
    width = 0.3 + 0.2 * rng.standard_normal((16, 3, 2))
    paired = init[:32]
    lo, mid, hi = calibrated_band(init, width, 256, paired_draws=paired)
    blo, bmid, bhi = add_width_band(init, width, paired_draws=paired)
    assert 0.5 < CALIBRATED_C < 2.0 and calibrated_factor(256) == CALIBRATED_C
    np.testing.assert_allclose(mid, bmid, atol=1e-12)
    np.testing.assert_allclose(mid - lo, CALIBRATED_C * (bmid - blo), atol=1e-12)
    np.testing.assert_allclose(hi - mid, CALIBRATED_C * (bhi - bmid), atol=1e-12)
    with pytest.raises(ValueError, match="width"):
        calibrated_band(init, width, 0)


def test_errors_name_the_argument():
    real, lo, mid, hi = _constructed()
    with pytest.raises(ValueError, match="real"):
        coverage(real[:, :2], lo, hi)
    with pytest.raises(ValueError, match="first"):
        coverage(real, lo, hi, first=3)
    with pytest.raises(ValueError, match="lo/mid/hi"):
        required_factors(real, hi, mid, lo)
    with pytest.raises(ValueError, match="c:"):
        widen(lo, mid, hi, 0.0)
    with pytest.raises(ValueError, match="target"):
        fit_widening([np.ones(3)], 1.0)
    with pytest.raises(ValueError, match="draws"):
        band_from_draws(np.ones((1, 3)))


def test_script_report_on_constructed_results():
    """The script's table: coverage per configuration x width from the band's draws and
    the real networks; the factor fitted on the calibration configuration at widths >= 256
    only, then applied to the held-out one."""
    mod = _script()
    draws = np.linspace(0, 2, 201)[:, None, None] * np.ones((1, 3, 2))   # band ~[0.1, 1.9]
    real, *_ = _constructed()
    real = np.where(np.isnan(real), 1.0, real)     # inside [0.1, 1.9]: 1.5, 1, 1, 0.5
    wide = np.full_like(real, 1.0) + np.array([3.0, -3.0])[:, None, None]   # all outside
    band = {"test_loss": draws, "test_acc": draws}
    res = {"ring_dgd": {"band": band, "widths": {
               128: {"test_loss": wide, "test_acc": wide},       # below 256: not fitted
               256: {"test_loss": real, "test_acc": real}}},
           "complete_cta": {"band": band, "widths": {512: {"test_loss": real,
                                                           "test_acc": wide}}}}
    summary, rows = mod.report(res)
    by = {(r["config"], r["width"]): r for r in summary["rows"]}
    assert by[("ring_dgd", 128)]["test_loss"] == 0.0
    assert by[("ring_dgd", 256)]["test_loss"] == pytest.approx(4 / 8)   # 0 and 2: outside
    assert by[("complete_cta", 512)]["role"] == "held-out"
    # required factors at 256, |x - 1| / 0.9: 0, 0, 0.5, 0.5, 1, 1, 1.5, 2 (over 0.9); the
    # 90 % point is the 8th of 8 (ceil(7.2)); width 128 (factors 3 / 0.9) is not fitted
    assert summary["fitted_c"] == pytest.approx(2 / 0.9, rel=1e-9)
    assert by[("complete_cta", 512)]["test_loss_widened"] == pytest.approx(1.0)
    assert by[("complete_cta", 512)]["test_acc_widened"] == 0.0
    assert "fitted widening factor" in mod.markdown(summary)


Z90 = 1.6448536269514722   # the 95 % point of N(0, 1): a 5-95 % band is mean -/+ Z90 sd


def test_coverage_of_a_known_gaussian_band():
    """Band from 4000 draws of N(mu_t, sd_t^2) per (t, q); 500 real values from the same
    law: coverage 0.9 within 0.01 (about 4 sd of the binomial error over the 500 x 6 x 3
    independent points), at the horizon 0.9 within 0.04 (1500 points); values from a law
    1.5x wider: coverage P(|z| <= Z90 / 1.5) = 0.730 within 0.015."""
    rng = np.random.default_rng(0)
    mu = rng.normal(0, 3, (7, 3))
    sd = rng.uniform(0.5, 2.0, (7, 3))
    lo, _, hi = band_from_draws(mu + sd * rng.standard_normal((4000, 7, 3)))
    real = mu + sd * rng.standard_normal((500, 7, 3))
    assert coverage(real, lo, hi) == pytest.approx(0.9, abs=0.01)
    assert final_coverage(real, lo, hi) == pytest.approx(0.9, abs=0.04)
    wide = mu + 1.5 * sd * rng.standard_normal((500, 7, 3))
    from scipy.stats import norm

    assert coverage(wide, lo, hi) == pytest.approx(2 * norm.cdf(Z90 / 1.5) - 1, abs=0.015)


def test_fitted_factor_recovers_a_known_widening():
    """Real values 1.5x wider than the exact 5-95 % band of N(0, sd^2): the fitted ``c`` is
    1.5 within 2 % (the 90 % quantile of 60,000 |z|, relative error about 0.4 %), and the
    band widened by it covers 0.9 within 0.005."""
    rng = np.random.default_rng(1)
    sd = rng.uniform(0.5, 2.0, (6, 2))
    lo, mid, hi = -Z90 * sd, np.zeros_like(sd), Z90 * sd
    real = 1.5 * sd * rng.standard_normal((5000, 6, 2))
    c = fit_widening([required_factors(real, lo, mid, hi)], 0.9)
    assert c == pytest.approx(1.5, rel=0.02)
    assert coverage(real, *widen(lo, mid, hi, c)) == pytest.approx(0.9, abs=0.005)


def test_fitted_law_recovers_a_known_width_dependence():
    """At widths 256, 1024, 4096 real values ``1 + 8 n^-1/2`` (1.5, 1.25, 1.125) times
    wider than the exact band: the fitted law's ``a`` is 8 within 5 %, ``c(n)`` is 1.5 /
    1.25 / 1.125 within 1 %, and every width's widened band covers 0.9 within 0.01; one
    constant factor (about 1.30) covers about 0.845 at 256 and 0.942 at 4096."""
    rng = np.random.default_rng(2)
    sd = rng.uniform(0.5, 2.0, (5, 2))
    lo, mid, hi = -Z90 * sd, np.zeros_like(sd), Z90 * sd
    real = {n: (1 + 8 / np.sqrt(n)) * sd * rng.standard_normal((8000, 5, 2))
            for n in (256, 1024, 4096)}
    factors = {n: [required_factors(x, lo, mid, hi)] for n, x in real.items()}
    a = fit_widening_law(factors, 0.9)
    assert a == pytest.approx(8.0, rel=0.05)
    for n, x in real.items():
        assert widening_factor(n, a) == pytest.approx(1 + 8 / np.sqrt(n), rel=0.01)
        assert coverage(x, *widen(lo, mid, hi, widening_factor(n, a))) == pytest.approx(
            0.9, abs=0.01)
    c = fit_widening([f for fs in factors.values() for f in fs], 0.9)
    assert coverage(real[256], *widen(lo, mid, hi, c)) < 0.87
    assert coverage(real[4096], *widen(lo, mid, hi, c)) > 0.93


def test_fitted_law_is_the_smallest_that_reaches_the_target():
    """On the constructed case at two widths, the fitted ``a`` covers >= target pooled and
    ``a`` just below it covers less; ``final_coverage`` counts the last record only (3 of
    its 4 points inside)."""
    real, lo, mid, hi = _constructed()
    r = required_factors(real, lo, mid, hi)
    for target in (0.3, 5 / 8, 0.75, 7 / 8):
        a = fit_widening_law({4: [r], 16: [r]}, target)
        inside = [coverage(real, *widen(lo, mid, hi, widening_factor(n, a))) for n in (4, 16)]
        assert np.mean(inside) >= target - 1e-12
        below = [coverage(real, *widen(lo, mid, hi, widening_factor(n, a - 1e-6)))
                 for n in (4, 16)]
        assert np.mean(below) < target
    assert final_coverage(real, lo, hi) == pytest.approx(3 / 4, abs=1e-15)
    assert fit_widening_law({4: [r]}, 0.99) == np.inf


def test_law_errors_name_the_argument():
    with pytest.raises(ValueError, match="width"):
        widening_factor(0, 1.0)
    with pytest.raises(ValueError, match="width"):
        widening_factor(4, -2.0)          # c(4) = 1 - 2 / 2 = 0
    with pytest.raises(ValueError, match="target"):
        fit_widening_law({4: [np.ones(3)]}, 0.0)
    with pytest.raises(ValueError, match="factors_by_width"):
        fit_widening_law({}, 0.9)
    with pytest.raises(ValueError, match="factors_by_width"):
        fit_widening_law({0: [np.ones(3)]}, 0.9)


def test_script_calibrates_the_combined_band_and_round_trips_raw(tmp_path):
    """Constructed results with finite-width draws: the combined band's factor and law are
    fitted on the calibration configuration at widths >= 256, every row gets the coverage
    over all records and at the horizon, the centre table says which centre the real
    networks follow (the shift measured against the paired draws), and ``save_raw`` ->
    ``load_raw`` rebuilds the same summary."""
    mod = _script()
    rng = np.random.default_rng(3)
    init = rng.standard_normal((400, 4, 2))                      # band about 0 -/+ 1.64
    width = 0.5 + 0.1 * rng.standard_normal((16, 4, 2))         # centre moves to 0.5
    paired = init[:32] + 0.1                   # the width samples' own draws, mean + 0.1
    res = {}
    for name in ("ring_dgd", "complete_cta"):
        res[name] = {"band": {"test_loss": init, "test_acc": init, "paired_test_loss": paired,
                              "paired_test_acc": paired}, "widths": {}}
        for w in (128, 256, 1024):
            real = 0.5 + 1.3 * rng.standard_normal((30, 4, 2))
            res[name]["widths"][w] = {"test_loss": real, "test_acc": real,
                                      "width_test_loss": width, "width_test_acc": width}
    summary, rows = mod.report(res)
    fit = summary["combined_fit"]
    assert fit["configs"] == ["ring_dgd"] and set(fit["per_width_c"]) == {256, 1024}
    assert 1.0 < fit["c"] < 1.8
    for r in summary["rows"]:
        for k in ("plain", "combined", "combined_c", "combined_law"):
            assert 0.0 <= r[f"test_loss_{k}"] <= 1.0
            assert 0.0 <= r[f"test_loss_{k}_final"] <= 1.0
    centre = {(r["config"], r["width"]): r for r in summary["centre"]}
    assert centre[("ring_dgd", 256)]["width_centre"] == pytest.approx(
        init[:, -1].mean() + width[:, -1].mean() - paired[:, -1].mean(), abs=1e-12)
    assert centre[("ring_dgd", 256)]["followed"] == pytest.approx(1.0, abs=0.6)
    assert "law a =" in mod.calibration_markdown(summary)
    mod.save_raw(res, tmp_path / "raw.npz", every=10)
    again, _ = mod.report(mod.load_raw(tmp_path / "raw.npz"))
    assert json.dumps(again, default=float) == json.dumps(summary, default=float)
    with np.load(tmp_path / "raw.npz") as z:
        assert z["ring_dgd/w256/combined/test_loss"].shape == (3, 4, 2)
        assert z["ring_dgd/w256/real/test_loss"].shape == (30, 4, 2)


@pytest.mark.slow  # about 40 s of CPU: 2 configurations, one width, 2 seeds each, then a third
def test_script_runs_a_tiny_configuration(tmp_path):
    """End to end: bands, real networks, the finite-width band, JSON and figure; the
    coverage in the JSON equals the one recomputed from the saved arrays; a rerun with more
    seeds extends the saved ones."""
    mod = _script()
    out = tmp_path / "cov"
    rc = mod.main(["--configs", "ring_dgd,complete_cta", "--widths", "64", "--seeds", "2",
                   "--samples", "16", "--width-samples", "2", "--width-band-init-samples",
                   "4", "--n-train", "40", "--n-test", "20", "--agents", "4", "--steps",
                   "20", "--every", "10", "--out", str(out), "--figure",
                   str(tmp_path / "f.png"), "--figure-width", "64"])
    assert rc == 0
    summary = json.loads((out / "coverage.json").read_text())
    assert {(r["config"], r["width"]) for r in summary["rows"]} == {("ring_dgd", 64),
                                                                   ("complete_cta", 64)}
    band = np.load(out / "ring_dgd_band.npz")
    real = np.load(out / "ring_dgd_w64.npz")
    assert real["test_loss"].shape == (2, 3, 4) and band["test_loss"].shape == (16, 3, 4)
    assert real["width_test_loss"].shape == (2, 3, 4)
    lo, _, hi = band_from_draws(band["test_loss"])
    row = next(r for r in summary["rows"] if r["config"] == "ring_dgd")
    assert row["test_loss"] == pytest.approx(coverage(real["test_loss"], lo, hi), abs=1e-15)
    assert 0.0 <= row["test_loss_with_width"] <= 1.0
    assert (tmp_path / "f.png").stat().st_size > 10_000
    # a rerun with one more seed trains only seed 2 and keeps the saved ones
    before = real["test_loss"]
    assert mod.main(["--configs", "ring_dgd", "--widths", "64", "--seeds", "3",
                     "--n-train", "40", "--n-test", "20", "--agents", "4", "--steps", "20",
                     "--every", "10", "--out", str(out)]) == 0
    after = np.load(out / "ring_dgd_w64.npz")["test_loss"]
    assert after.shape == (3, 3, 4)
    np.testing.assert_array_equal(after[:2], before)
