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


def test_ce_sgd_width_sweep_matches_predict(case):
    """nd.predict_sweep with cross-entropy, batch_size and width: each rate's trajectory and
    width draws (and paired draws) equal nd.predict's at that rate to 1e-10."""
    parts, W, arch, kw, traj = case
    kw = {k: v for k, v in kw.items() if k != "lr"}
    (t,) = nd.predict_sweep(arch, parts, W, [0.5], width=128, width_samples=3, **kw)
    assert t.metadata["band_over"] == "init+batch"
    for m in METRICS:
        for key in (m, f"paired/{m}"):
            np.testing.assert_allclose(t.width_draws[key], traj.width_draws[key],
                                       rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(t.draws[m], traj.draws[m], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("batch_size", [6, 0])
def test_check_with_ce_sgd_reports_the_width_band_with_its_note(tmp_path, capsys, batch_size):
    """`ntkdyn check` with cross-entropy, batch_size and [prediction] width: the band is
    reported (JSON validates) with the cross-entropy note (SGD on the same sampled batch
    sequences, not the full-batch dynamics), and its final test-loss band equals the
    per-agent 5-95 % quantiles of fw.width_draws with the same arguments (loss, logit
    scale, batches) averaged over agents (1e-12); the same for full-batch cross-entropy
    (no note; formerly refused by check); full-batch cross-entropy with width_tol (formerly
    a ConfigError naming the key) reports a width whose tolerance is in nats."""
    import jsonschema
    from test_width_config import CHECK, SCHEMA

    raw = json.loads(json.dumps(CHECK))
    raw["training"].update(loss="cross_entropy", lr=0.5)
    if batch_size:
        raw["training"].update(batch_size=batch_size, samples=4)
    raw["prediction"].update(width=64, width_samples=3, samples=4)
    raw["prediction"].pop("target_loss")
    lines = [f"seed = {raw.pop('seed')}"]
    for sec, vals in raw.items():
        lines += [f"[{sec}]"] + [f"{k} = {json.dumps(v)}" for k, v in vals.items()]
    path = tmp_path / "c.toml"
    path.write_text("\n".join(lines) + "\n")
    assert main(["check", str(path), "--json"]) in (0, 1)
    out = json.loads(capsys.readouterr().out)
    jsonschema.validate(out, SCHEMA)
    fw_out = out["finite_width"]
    if batch_size:
        assert fw_out["minibatch_note"].startswith("mini-batch SGD with cross-entropy")
    else:
        assert "minibatch_note" not in fw_out
    assert fw_out["band"]["statuses"] == {"ok": 3}
    from ntkdyn.config.experiment import from_config
    from ntkdyn.config.schema import load_config

    cfg = load_config(path)
    exp = from_config(cfg)
    draws, info = fw.width_draws(exp.arch, exp.parts, exp.mixing, 0.5, exp.algorithm,
                                 cfg.steps, width=64, samples=3, seed=0,
                                 f0=fw_out["band"]["f0"], init_samples=4,
                                 batch_size=batch_size, loss="cross_entropy",
                                 logit_scale=cfg.training.logit_scale)
    assert info.get("dynamics", "mini-batch SGD (cross-entropy").startswith(
        "mini-batch SGD (cross-entropy")
    ref = np.quantile(draws["test_loss"][:, -1], [0.05, 0.95], axis=0).mean(axis=1)
    np.testing.assert_allclose(fw_out["band"]["final_test_loss_band"], ref, rtol=1e-12)
    if batch_size:  # width_tol with cross-entropy SGD: tests/test_preflight_losses.py
        return
    tol = 'width = 64\nwidth_tol = 0.1\nwidth_metric = "test_loss"'
    path.write_text(path.read_text().replace("width = 64", tol))
    assert main(["check", str(path), "--json"]) in (0, 1)
    est = json.loads(capsys.readouterr().out)["finite_width"]["width_for"]
    assert est["loss"] == "cross_entropy" and "in nats" in est["quantity"]
    assert est["error"] is None and est["width"] >= 1 and len(est["spreads"]) == 3
