"""What a reader sees (issue 12): no ``-0.000``, a summary of the settings that apply,
a short ``FixedPoint`` repr, the random-gossip band and mean-state line."""

from __future__ import annotations

import importlib
import json

import numpy as np
import pytest
from conftest import TINY_TOML as TINY
from conftest import strict_json

import ntkdyn as nd
from ntkdyn.cli import main
from ntkdyn.config.schema import applicable, config_from_dict
from ntkdyn.plotting import plot_trajectory


@pytest.mark.parametrize("value, spec, shown", [
    (-1e-17, ".3f", "0.000"), (-0.0, ".3f", "0.000"), (-0.0, ".4g", "0"),
    (-0.0004, ".3f", "0.000"), (-0.0006, ".3f", "-0.001"), (0.25, ".3f", "0.250"),
    (None, ".3f", "-"), (12, "d", "12"),
])
def test_check_tables_never_print_negative_zero(value, spec, shown):
    """lambda_min of the complete graph's mixing matrix is -1e-17: it printed -0.000."""
    check_module = importlib.import_module("ntkdyn.preflight")
    assert check_module._fmt(value, spec) == shown


def test_summary_lists_only_settings_that_apply(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(TINY)
    out = tmp_path / "out"
    assert main(["predict", str(cfg), "--out", str(out), "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    c = summary["config"]
    assert c["training"]["algorithm"] == "dgd" and c["training"]["lr"] == 0.3
    for section, key in (("training", "local_steps"), ("training", "consensus_steps"),
                         ("training", "momentum"), ("topology", "gossip_p"),
                         ("topology", "gossip_samples"), ("topology", "gossip"),
                         ("topology", "adjacency_file"), ("topology", "mixing_file"),
                         ("topology", "sequence"), ("data", "dim"), ("data", "separation"),
                         ("data", "path"), ("partition", "alpha"),
                         ("partition", "shards_per_agent"), ("prediction", "target_loss")):
        assert key not in c[section], f"{section}.{key}"
    assert "validation" not in c
    for key in ("gossip_samples", "final_test_loss_mean_of_mean_state", "phases"):
        assert key not in summary
    # the full configuration stays in the trajectory's metadata (reproducibility)
    traj = nd.Trajectory.load(out / "trajectory.npz")
    assert traj.metadata["config"]["training"]["local_steps"] == 5


def test_applicable_keeps_the_settings_of_the_chosen_modes():
    cfg = config_from_dict({"training": {"algorithm": "p2pl", "local_steps": 3},
                            "topology": {"gossip": "edges", "gossip_p": 0.3},
                            "partition": {"scheme": "dirichlet", "alpha": 0.5}})
    c = applicable(cfg)
    assert c["training"]["local_steps"] == 3 and "consensus_steps" in c["training"]
    assert "momentum" not in c["training"]
    assert c["topology"]["gossip_p"] == 0.3 and c["topology"]["gossip_samples"] == 64
    assert c["partition"]["alpha"] == 0.5 and "shards_per_agent" not in c["partition"]
    assert "validation" in applicable(cfg, "validate")
    assert "target_loss" in applicable(cfg, "check")["prediction"]


@pytest.fixture(scope="module")
def small():
    data = nd.data.digits(classes=[0, 1, 2], n_train=60, n_test=30, seed=0)
    parts = nd.data.partition(data, agents=4, seed=0)
    return nd.models.MLP(hidden=(64,), out=3), parts


def test_fixed_point_repr_is_short(small):
    arch, parts = small
    w = nd.graphs.mixing(nd.graphs.topology("ring", 4))
    fp = nd.fixed_point(nd.build_problem(arch, parts, w), "dgd", 0.3)
    text = repr(fp)
    assert len(text) < 400 and "array(" not in text and "\n" not in text, text
    assert text.startswith("FixedPoint('dgd', Q=4, lr=0.3, network='mean network (f0 = 0)', "
                           "train_loss_mean=")
    assert "consensus_gap=" in text and "train_outputs.shape=(4, 60, 3)" in text
    assert str(fp) == text
    # build_problem's default f0="random" holds f0 = 0 too: the numbers are the mean
    # network's (not one random network's, larger), and the repr says so; a given network
    # (f0="network": its own outputs) is named as such
    given = nd.fixed_point(nd.build_problem(arch, parts, w, f0="network"), "dgd", 0.3)
    assert fp.network == "mean network (f0 = 0)"
    assert given.network == "the network whose f0 was given"


def test_random_gossip_plot_shows_band_and_mean_state(small, tmp_path):
    arch, parts = small
    g = nd.graphs.topology("ring", 4)
    traj = nd.predict(arch, parts, nd.graphs.random_edges(g, p=0.5, seed=0), lr=0.3,
                      steps=range(0, 41, 10), samples=8, f0="mean")  # the gossip band alone
    fig = plot_trajectory(traj)
    ax = fig.axes[4]  # consensus distance: the panel where sequences differ most
    bands = [c for c in ax.collections if "5-95 % over 8 sampled" in str(c.get_label())]
    assert len(bands) == 1 and len(ax.collections) >= 4  # one band per agent
    exact = [ln for ln in ax.lines if "mean state" in ln.get_label()]
    assert len(exact) == 1 and exact[0].get_linestyle() == "-."
    want = traj.expected.consensus_dist.mean(axis=1)
    np.testing.assert_allclose(exact[0].get_ydata()[1:], want[1:], rtol=1e-12)  # log: 0 -> nan
    low, high = traj.band("consensus_dist")
    assert np.all(low <= high)
    fig.savefig(tmp_path / "gossip.png", dpi=60)


def test_figure_legend_stays_inside_the_figure():
    """The six-panel figure's legend (one random network with cross-entropy and mini-batches
    has labels of 85 characters: three columns of them ran past both edges): long labels
    are wrapped and the columns chosen so that every entry is inside the figure."""
    from ntkdyn.plotting import legend_layout, pyplot

    long = ["network mean, average over 8 sampled initialisations and mini-batch sequences "
            "jointly", "5-95 % over 8 sampled initialisations and mini-batch sequences jointly "
            "(each agent)", "network mean: 5-95 % over 8 mini-batch sequences alone (f0 = 0)",
            "network from f0 = 0 (cross-entropy: not the mean network)",
            "centralised reference", "agents 1..4 (one colour each)"]
    short = ["network mean", "mean network (f0 = 0; not one network)",
             "centralised reference", "agents 1..8 (one colour each)"]
    plt = pyplot()
    for labels in (long, short):
        wrapped, ncol = legend_layout(labels)
        assert all(len(line) <= 62 for lab in wrapped for line in lab.splitlines())
        fig, axes = plt.subplots(2, 3, figsize=(13, 7.2), constrained_layout=True)
        handles = [axes.flat[0].plot([0, 1], [0, 1])[0] for _ in labels]
        legend = fig.legend(handles, wrapped, loc="outside lower center", ncol=ncol,
                            frameon=False)
        fig.canvas.draw()
        box, frame = legend.get_window_extent(), fig.bbox
        assert box.x0 >= frame.x0 and box.x1 <= frame.x1, (ncol, box, frame)
        plt.close(fig)
    assert legend_layout(short)[1] == 3 and legend_layout(long)[1] == 2


def test_run_diverged_before_its_second_record_is_plotted(tmp_path):
    """A rate far above lr* diverges before the first record after step 0: the trajectory
    holds step 0 only, where the distances are all 0, and matplotlib refused the log axis
    of those panels ("Data cannot be log-scaled", exit 2 with no output; found with 100
    agents at lr 0.4, lr* 0.077).  Now the run is written and plotted, the status says
    diverged, and a panel with nothing positive keeps a linear axis."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(TINY.replace("lr = 0.3", "lr = 80.0"))
    out = tmp_path / "out"
    assert main(["predict", str(cfg), "--out", str(out), "--quiet"]) == 0
    summary = strict_json((out / "summary.json").read_text())  # no bare NaN / Infinity
    assert summary["status"] == "diverged"
    traj = nd.Trajectory.load(out / "trajectory.npz")
    assert list(traj.steps) == [0]
    assert (out / "trajectory.png").stat().st_size > 20_000
    fig = plot_trajectory(traj)
    scales = {ax.get_ylabel(): ax.get_yscale() for ax in fig.axes if ax.has_data()}
    assert scales["train loss"] == "log"  # positive at step 0: still a log axis
    assert scales[r"$\|\theta_q-\bar\theta\|$ (consensus)"] == "linear"
    # the one record is drawn (markers), the divergence is marked and in the title
    assert all(line.get_marker() == "o" for line in fig.axes[0].get_lines()
               if len(line.get_xdata()) == 1)
    div = traj.diverged_at
    assert 0 < div < 10 and f"[diverged at step {div}]" in fig._suptitle.get_text()
    assert any(f"diverged at step {div}" in line.get_label() for line in fig.axes[0].get_lines())
    # an overlay (observed given) marks both runs itself (validation.overlay): no second line
    over = plot_trajectory(traj, observed=traj)
    assert not any("later records dropped" in line.get_label()
                   for ax in over.axes for line in ax.get_lines())


def test_json_outputs_are_standard_json():
    """check --json, summary.json and agreement.json are standard JSON (RFC 8259): a value
    that does not exist (nan) is null, +-inf the strings "inf" / "-inf", numpy numbers
    plain numbers.  json.dumps wrote bare NaN / -Infinity, which jq refuses (found in
    gradient tracking's check report: no sufficient bound)."""
    from ntkdyn._utils.io import json_text

    report = {"lr_bound": float("nan"), "margin": -np.inf, "lr_star": np.float64(np.inf),
              "rates": np.array([0.5, np.nan]), "count": np.int64(3), "ok": np.bool_(True),
              (1, 2): (np.float32(0.25), None), "path": nd}
    with pytest.raises(ValueError, match="Out of range float"):
        json.dumps(report | {"path": "x", "key": 1}, allow_nan=False, default=str)
    back = strict_json(json_text(report))
    assert back == {"lr_bound": None, "margin": "-inf", "lr_star": "inf",
                    "rates": [0.5, None], "count": 3, "ok": True, "(1, 2)": [0.25, None],
                    "path": str(nd)}
    assert strict_json(json_text([1.5, "a"], indent=None)) == [1.5, "a"]
    with pytest.raises(ValueError, match="bare NaN"):
        strict_json(json.dumps({"x": float("nan")}))


def test_summary_reports_no_accuracy_with_one_output():
    """With one output (K = 1, regression) the argmax accuracy is 1 by construction: the
    summary printed "test accuracy 1.0000"; now it says why there is none (the mean
    network's and the band's lines too), and K = 2 still reports it."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(34, 5))
    pooled = x @ x.T / 5 + 0.1
    w = nd.graphs.mixing(nd.graphs.topology("ring", 4))
    for k in (1, 2):
        args = dict(kernel_test_train=pooled[24:, :24], y_test=rng.normal(size=(10, k)))
        for extra in ({}, {"nngp": pooled, "samples": 8}):
            traj = nd.predict_from_kernels(pooled[:24, :24], rng.normal(size=(24, k)),
                                           np.arange(24) % 4, w, 0.5, 20, **args, **extra)
            text = traj.summary()
            assert ("test accuracy" in text) == (k == 2), text
            assert ("no accuracy: with one output (K = 1)" in text) == (k == 1), text
