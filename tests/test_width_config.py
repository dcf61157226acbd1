"""``[prediction] width / width_samples / width_tol`` (issue 14): the finite-width band from a
TOML file, in ``ntkdyn predict`` (summary.json, plot) and ``ntkdyn check`` (band, width for a
tolerance); configuration errors name the key."""

import json
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from conftest import TINY_TOML as TINY

import ntkdyn
from ntkdyn import Trajectory
from ntkdyn.cli import main
from ntkdyn.config.schema import ConfigError, applicable, config_from_dict

SCHEMA = json.loads((Path(ntkdyn.__file__).parent / "schemas" / "check.schema.json").read_text())


@pytest.mark.parametrize("raw, needle", [
    ({"prediction": {"width": -1}}, "prediction.width: expected a value >= 0"),
    ({"prediction": {"width": 1.5}}, "prediction.width: expected an integer"),
    ({"prediction": {"width": 64, "width_samples": 1}},
     "prediction.width_samples: expected an integer >= 2"),
    ({"prediction": {"width_samples": 8}}, "prediction.width_samples: only used with"),
    ({"prediction": {"width_metric": "test_loss"}}, "prediction.width_metric: only used with"),
    ({"prediction": {"width_tol": 0.01, "width_metric": "loss"}},
     "prediction.width_metric: expected one of"),
    ({"prediction": {"width_tol": -0.1}}, "prediction.width_tol: expected a value >= 0"),
    ({"prediction": {"width": 64, "kernel": "empirical"}},
     "prediction.width: the finite-width band cannot be combined with prediction.kernel"),
    ({"prediction": {"width": 64, "f0": "network"}}, "prediction.width: the finite-width band "
     "cannot be combined with prediction.f0 = 'network'"),
    ({"prediction": {"width": 64, "rank": 10}}, "prediction.width: the finite-width band "
     "cannot be combined with prediction.rank"),
    ({"prediction": {"width": 64}, "topology": {"name": "ring", "gossip": "edges"}},
     "prediction.width: the finite-width band cannot be combined with random gossip"),
    ({"prediction": {"width_tol": 0.01, "kernel": "empirical"}},
     "prediction.width_tol: the finite-width band cannot be combined with prediction.kernel"),
])
def test_width_keys_errors_name_the_key(raw, needle):
    with pytest.raises(ConfigError) as err:
        config_from_dict(raw)
    assert needle in str(err.value)


def test_width_keys_listed_only_where_they_apply():
    plain = config_from_dict({})
    assert plain.prediction.width == 0 and plain.prediction.width_tol == 0
    for cmd in ("predict", "check"):
        assert not {"width", "width_samples", "width_tol", "width_metric"} & \
            set(applicable(plain, cmd)["prediction"])
    cfg = config_from_dict({"prediction": {"width": 64, "width_samples": 4, "width_tol": 0.01}})
    assert applicable(cfg, "predict")["prediction"]["width"] == 64
    assert "width_tol" not in applicable(cfg, "predict")["prediction"]
    assert applicable(cfg, "check")["prediction"]["width_metric"] == "test_acc"


def test_predict_command_draws_the_width_band(tmp_path):
    """``[prediction] width = 32, width_samples = 4``: the trajectory carries the 4 networks'
    draws, summary.json their final 5-95 % bands (equal to ``traj.band(..., over="width")``
    to 1e-12) apart from the band over initialisations, and the plot is written."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(TINY + "[prediction]\nwidth = 32\nwidth_samples = 4\n")
    out = tmp_path / "out"
    assert main(["predict", str(cfg), "--out", str(out), "--quiet"]) == 0
    traj = Trajectory.load(out / "trajectory.npz")
    assert traj.width_draws["test_loss"].shape == (4, 5, 3)
    summary = json.loads((out / "summary.json").read_text())
    fw = summary["finite_width"]
    assert fw["width"] == 32 and fw["samples"] == 4 and fw["statuses"] == {"ok": 4}
    assert fw["seeds"] == [1, 2, 3, 4]  # seed .. seed + S - 1
    for metric in ("test_loss", "test_acc"):
        lo, hi = traj.band(metric, 0.05, 0.95, over="width")
        assert fw[f"final_{metric}_band_5_95"] == pytest.approx(
            [lo[-1].mean(), hi[-1].mean()], rel=1e-12, abs=1e-12)
    # the band over initialisations stays apart from the width band
    assert summary["final_test_loss_band_5_95"] != fw["final_test_loss_band_5_95"]
    assert summary["config"]["prediction"]["width"] == 32
    assert (out / "trajectory.png").stat().st_size > 10_000


def test_predict_command_without_width_has_no_width_band(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(TINY)
    out = tmp_path / "out"
    assert main(["predict", str(cfg), "--out", str(out), "--quiet"]) == 0
    assert "finite_width" not in json.loads((out / "summary.json").read_text())


def test_width_band_plot_is_labelled_apart_from_the_init_band():
    from ntkdyn.plotting import plot_trajectory

    data = ntkdyn.data.digits(n_train=30, n_test=15, seed=0)
    parts = ntkdyn.data.partition(data, agents=3, scheme="iid", seed=0)
    w = ntkdyn.graphs.mixing(ntkdyn.graphs.topology("ring", 3))
    traj = ntkdyn.predict(ntkdyn.models.MLP(hidden=(64,), out=10), parts, w, lr=0.3,
                          steps=[0, 10, 20], width=32, width_samples=3, samples=8)
    fig = plot_trajectory(traj)
    labels = fig.legends[0].get_texts()
    words = [" ".join(t.get_text().split()) for t in labels]  # labels may be wrapped
    assert any("over 3 networks of width 32" in s for s in words), words
    assert any("sampled initialisations" in s for s in words), words
    import matplotlib.pyplot as plt

    plt.close(fig)


# ------------------------------------------------------------------ ntkdyn check
CHECK = {
    "seed": 0,
    "data": {"source": "digits", "classes": [0, 1, 2], "n_train": 48, "n_test": 24},
    "partition": {"agents": 4},
    "topology": {"name": "ring"},
    "architecture": {"depth": 1, "width": 256},
    "training": {"algorithm": "dgd", "lr": 0.1, "steps": 100, "record_every": 20},
    "prediction": {"target_loss": 0.2},
}


def _toml(prediction: dict) -> str:
    raw = json.loads(json.dumps(CHECK))
    raw["prediction"].update(prediction)
    lines = [f"seed = {raw.pop('seed')}"]
    for sec, vals in raw.items():
        lines.append(f"[{sec}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in vals.items()]
    return "\n".join(lines) + "\n"


def test_check_prints_the_width_band_and_the_width_for_a_tolerance(tmp_path, capsys):
    """``width = 128`` and ``width_tol = 0.02`` on the test loss: the report's band equals
    the per-agent 5-95 % quantiles of ``width_draws`` averaged over agents (1e-12), its
    ``width_for`` equals :func:`ntkdyn.width_for` with the same arguments (same seeds:
    identical), the JSON validates against the schema, and the text prints both."""
    from ntkdyn import finite_width as fw
    from ntkdyn.config.experiment import from_config

    path = tmp_path / "c.toml"
    pred = {"width": 128, "width_samples": 4, "width_tol": 0.02, "width_metric": "test_loss",
            "samples": 8}
    path.write_text(_toml(pred))
    assert main(["check", str(path), "--json"]) in (0, 1)
    out = json.loads(capsys.readouterr().out)
    jsonschema.validate(out, SCHEMA)
    rep = out["finite_width"]
    assert out["timings"]["prediction_s"] >= rep["seconds"] > 0  # counted in the total
    cfg = config_from_dict({**CHECK, "prediction": {**CHECK["prediction"], **pred}})
    exp = from_config(cfg)
    draws, _ = fw.width_draws(exp.arch, exp.parts, exp.mixing, 0.1, exp.algorithm, cfg.steps,
                              width=128, samples=4, seed=0, f0="random", init_samples=8)
    lo, hi = np.nanquantile(draws["test_loss"][:, -1], [0.05, 0.95], axis=0).mean(axis=1)
    assert rep["band"]["final_test_loss_band"] == pytest.approx([lo, hi], rel=1e-12)
    est = ntkdyn.width_for(exp.arch, exp.parts, exp.mixing, lr=0.1, steps=cfg.steps,
                           metric="test_loss", tol=0.02, samples=4, seed=0, init_samples=8)
    assert rep["width_for"]["width"] == est.width
    assert rep["width_for"]["spreads"] == pytest.approx(list(est.spreads), rel=1e-12)
    path.write_text(_toml(pred))
    assert main(["check", str(path)]) in (0, 1)
    text = capsys.readouterr().out
    assert "Finite width (linearised prediction over networks' empirical kernels" in text
    assert "width 128 (4 networks): test loss 5-95 %:" in text
    assert f"width for test loss within 0.02 (5-95 % half-width at the horizon): {est.width}" \
        in text


def test_check_without_width_keys_has_no_finite_width_section(tmp_path, capsys):
    path = tmp_path / "c.toml"
    path.write_text(_toml({}))
    main(["check", str(path), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert out["finite_width"] is None


MB_WIDTH = "\n".join(["[prediction]", "width = 32", "width_samples = 3", "samples = 6", ""])


def test_predict_command_with_minibatch_sgd_draws_the_width_band(tmp_path, monkeypatch):
    """``training.batch_size = 5`` with ``[prediction] width``: the run succeeds, summary.json
    reports the width band and says its draws run full-batch dynamics (the expected SGD
    trajectory), and the plot's title says the band of the sampled networks is JOINT over
    initialisations and mini-batch sequences (metadata["band_over"] == "init+batch"), not
    over sampled f0 alone."""
    import ntkdyn.plotting

    titles = []
    real = ntkdyn.plotting.plot_trajectory
    monkeypatch.setattr(ntkdyn.plotting, "plot_trajectory",
                        lambda traj, path, title=None: titles.append(title)
                        or real(traj, path, title=title))
    cfg = tmp_path / "c.toml"
    cfg.write_text(TINY.replace("steps = 40", "steps = 40\nbatch_size = 5") + MB_WIDTH)
    out = tmp_path / "out"
    assert main(["predict", str(cfg), "--out", str(out), "--quiet"]) == 0
    traj = Trajectory.load(out / "trajectory.npz")
    assert traj.metadata["band_over"] == "init+batch"
    assert traj.width_draws["test_loss"].shape == (3, 5, 3)
    fw = json.loads((out / "summary.json").read_text())["finite_width"]
    assert fw["width"] == 32 and fw["statuses"] == {"ok": 3}
    assert fw["dynamics"].startswith("full batch: each width-n kernel's expected SGD")
    lo, hi = fw["final_test_loss_band_5_95"]
    assert 0 < lo < hi
    (title,) = titles
    assert "5-95 % band over initialisations and mini-batch sequences jointly" in title
    assert "over sampled f0" not in title


def test_check_with_minibatch_sgd_reports_the_width_band_with_a_note(tmp_path, capsys):
    """``ntkdyn check`` with ``batch_size > 0`` (squared loss) and ``[prediction] width``:
    the finite-width band is reported (JSON validates) with a one-line note, in the JSON and
    the text, that its draws are each kernel's full-batch dynamics, the expected SGD
    trajectory: to first order in the rate with the default epoch sampling, exact with
    independent draws.  Without batch_size there is no such note."""
    raw = json.loads(json.dumps(CHECK))
    raw["training"].update(batch_size=6, samples=4)
    raw["prediction"].update(width=64, width_samples=3, samples=4)
    path = tmp_path / "c.toml"
    lines = [f"seed = {raw.pop('seed')}"]
    for sec, vals in raw.items():
        lines += [f"[{sec}]"] + [f"{k} = {json.dumps(v)}" for k, v in vals.items()]
    path.write_text("\n".join(lines) + "\n")
    assert main(["check", str(path), "--json"]) in (0, 1)
    out = json.loads(capsys.readouterr().out)
    jsonschema.validate(out, SCHEMA)
    fw = out["finite_width"]
    lo, hi = fw["band"]["final_test_loss_band"]
    assert 0 < lo < hi and fw["band"]["statuses"] == {"ok": 3}
    note = fw["minibatch_note"]
    assert "full-batch dynamics, the expected SGD trajectory" in note
    assert "to first order in the rate with batch_sampling='epoch'" in note
    assert main(["check", str(path)]) in (0, 1)
    text = capsys.readouterr().out
    assert "width 64 (3 networks): test loss 5-95 %:" in text
    assert f"  {note}" in text.splitlines()
    path.write_text(path.read_text().replace("batch_size = 6",
                                             'batch_size = 6\nbatch_sampling = "independent"'))
    assert main(["check", str(path), "--json"]) in (0, 1)
    assert "(exact with batch_sampling='independent')" in \
        json.loads(capsys.readouterr().out)["finite_width"]["minibatch_note"]
    path.write_text(_toml({"width": 64, "width_samples": 3, "samples": 4}))
    assert main(["check", str(path), "--json"]) in (0, 1)
    assert "minibatch_note" not in json.loads(capsys.readouterr().out)["finite_width"]
