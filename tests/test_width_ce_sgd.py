"""The finite-width band with cross-entropy and mini-batch SGD (issue 15): each width-n
kernel runs the infinite-width prediction's sampled networks on the same batch sequences
(paired draws), and ``over="calibrated"`` combines the joint init+batch band with the width
shift as for full batch.  Replaces the former refusal of ``width=`` with cross-entropy and
``batch_size > 0``."""

import json

import numpy as np
import pytest
from conftest import TINY_TOML as TINY

import ntkdyn as nd
from ntkdyn import bands
from ntkdyn import finite_width as fw
from ntkdyn.cli import main
from ntkdyn.kernels.empirical import mlp_empirical_ntk

METRICS = ("test_loss", "train_loss", "test_acc", "train_acc")


@pytest.fixture(scope="module")
def case():
    data = nd.data.digits(n_train=40, n_test=20, seed=0)
    parts = nd.data.partition(data, agents=4, scheme="iid", seed=0)
    W = nd.graphs.mixing(nd.graphs.topology("ring", 4))
    arch = nd.models.MLP(hidden=(64,), out=10)
    kw = dict(lr=0.5, steps=[0, 5, 20, 40], loss="cross_entropy", batch_size=5, samples=6,
              seed=2, reference=False)
    traj = nd.predict(arch, parts, W, width=128, width_samples=3, **kw)
    return parts, W, arch, kw, traj


def test_ce_sgd_width_draw_is_the_sgd_prediction_of_that_kernel(case):
    """(a) Width draw s equals a separate cross-entropy SGD prediction
    (nd.predict_from_kernels) with the empirical NTK and NNGP of the width-n network seeded
    seed + s, the same sampled f_0 (seed, 6 networks) and batch sequences (seed): every
    metric to 1e-10; the draws are SGD, not full batch (they differ from the full-batch
    width draws by more than 1e-3)."""
    parts, W, arch, kw, traj = case
    info = traj.metadata["finite_width"]
    assert info["dynamics"].startswith("mini-batch SGD (cross-entropy")
    assert info["batch_size"] == 5 and info["batch_sequences"] == 6
    assert info["init_samples"] == 6 and info["seeds"] == [2, 3, 4]
    sp = parts.sorted()
    data = sp.dataset
    net = fw.width_arch(arch, 128)
    pooled = np.concatenate([data.x_train, data.x_test])
    for s, params in enumerate(fw.network_params(net, data.dim, info["seeds"])):
        ref = nd.predict_from_kernels(
            mlp_empirical_ntk(net, params, data.x_train), data.y_train, sp.agent, W,
            kw["lr"], kw["steps"], kernel_test_train=mlp_empirical_ntk(
                net, params, data.x_test, data.x_train), y_test=data.y_test,
            loss="cross_entropy", batch_size=5, samples=6, seed=2, reference=False,
            nngp=fw.empirical_nngp(net, params, pooled))
        assert ref.metadata["band_over"] == "init+batch"
        for m in METRICS:
            np.testing.assert_allclose(traj.width_draws[m][s], getattr(ref, m), rtol=1e-10,
                                       atol=1e-12)
    full = nd.predict(arch, parts, W, width=128, width_samples=3,
                      **dict(kw, batch_size=0, samples=6))
    assert np.max(np.abs(full.width_draws["test_loss"][:, 1:]
                         - traj.width_draws["test_loss"][:, 1:])) > 1e-3


def test_ce_sgd_paired_draws_are_the_infinite_width_sgd_networks(case):
    """(b) width_draws["paired/<m>"][i] equals network i (f_0 draw i, batch sequence i) of
    an ordinary cross-entropy SGD prediction with the same seed, to 1e-10."""
    parts, W, arch, kw, traj = case
    plain = nd.predict(arch, parts, W, **kw)
    assert plain.metadata["band_over"] == "init+batch"
    for m in METRICS:
        assert traj.width_draws[f"paired/{m}"].shape == (6, 4, 4)
        np.testing.assert_allclose(traj.width_draws[f"paired/{m}"], plain.draws[m],
                                   rtol=1e-10, atol=1e-12)


def test_ce_sgd_calibrated_band_is_bands_calibrated_band(case, tmp_path):
    """(c) over="calibrated" equals bands.calibrated_band(draws, width_draws, n,
    paired_draws) to 1e-12 (mid = joint init+batch median + width shift against the paired
    draws; half-widths added in quadrature and widened by CALIBRATED_C); survives
    save/load."""
    *_, traj = case
    for m in METRICS:
        lo, hi = traj.band(m, 0.05, 0.95, over="calibrated")
        ref_lo, _, ref_hi = bands.calibrated_band(
            traj.draws[m], traj.width_draws[m], 128,
            paired_draws=traj.width_draws[f"paired/{m}"])
        np.testing.assert_allclose(lo, ref_lo, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(hi, ref_hi, rtol=1e-12, atol=1e-12)
        assert np.all(hi >= lo)
    back = nd.Trajectory.load(traj.save(tmp_path / "ce.npz"))
    np.testing.assert_array_equal(back.band("test_loss", over="calibrated")[0],
                                  traj.band("test_loss", over="calibrated")[0])


def test_ce_sgd_width_with_mean_network_runs_the_same_sequences(case):
    """f0="mean": each kernel runs the prediction's batch sequences from f_0 = 0 (6 of
    them); the draws have shape (S, T, Q) and no paired draws are kept."""
    parts, W, arch, kw, _ = case
    traj = nd.predict(arch, parts, W, f0="mean", width=64, width_samples=2, **kw)
    info = traj.metadata["finite_width"]
    assert info["batch_sequences"] == 6 and info["f0"] == "mean"
    assert traj.width_draws["test_loss"].shape == (2, 4, 4)
    assert not any(k.startswith("paired/") for k in traj.width_draws)


def test_predict_command_with_ce_sgd_and_width(tmp_path):
    """(d) A TOML config with training.loss = 'cross_entropy', training.batch_size and
    [prediction] width runs through `ntkdyn predict`: summary.json's finite_width says the
    draws are mini-batch SGD with paired sequences; the trajectory's calibrated band exists."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(TINY.replace("steps = 40", 'steps = 20\nbatch_size = 5\n'
                                'loss = "cross_entropy"')
                   + "[prediction]\nwidth = 32\nwidth_samples = 2\nsamples = 4\n")
    out = tmp_path / "out"
    assert main(["predict", str(cfg), "--out", str(out), "--quiet"]) == 0
    info = json.loads((out / "summary.json").read_text())["finite_width"]
    assert info["width"] == 32 and info["statuses"] == {"ok": 2}
    assert info["dynamics"].startswith("mini-batch SGD (cross-entropy")
    traj = nd.Trajectory.load(out / "trajectory.npz")
    assert traj.metadata["band_over"] == "init+batch"
    assert traj.width_draws["paired/test_loss"].shape[0] == 4
    lo, hi = traj.band("test_loss", 0.05, 0.95, over="calibrated")
    assert np.all(np.isfinite(lo)) and np.all(hi >= lo)
