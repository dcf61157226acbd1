"""The finite-width band (``ntkdyn.finite_width``): predictions over the empirical kernels of
width-n networks, kept apart from the band over initialisations; ``width_for``."""

import jax
import numpy as np
import pytest

import ntkdyn as nd
from ntkdyn import finite_width as fw


@pytest.fixture(scope="module")
def small():
    data = nd.data.digits(n_train=40, n_test=20, seed=0)
    parts = nd.data.partition(data, agents=4, scheme="iid", seed=0)
    W = nd.graphs.mixing(nd.graphs.topology("ring", 4))
    return parts, W, nd.models.MLP(hidden=(64,), out=10)


def test_band_half_width_falls_like_inverse_sqrt_width(small):
    """Standard deviation (over 96 kernels) of the final test loss at widths 256, 1024, 4096:
    fitted log-log slope within 0.1 of -1/2 (measured -0.51 .. -0.55 over three seed sets
    with five widths; noise of each sd about 7 %)."""
    parts, W, arch = small
    widths = (256, 1024, 4096)
    sd = []
    for n in widths:
        draws, info = fw.width_draws(arch, parts, W, 0.3, "dgd", [0, 100], width=n, samples=96,
                                     seed=0, f0="mean")
        assert info["statuses"] == {"ok": 96}
        sd.append(np.std(draws["test_loss"][:, -1].mean(axis=1), ddof=1))
    slope = np.polyfit(np.log(widths), np.log(sd), 1)[0]
    assert abs(slope + 0.5) < 0.1, (sd, slope)


def test_width_sample_is_the_empirical_kernel_prediction_of_that_network(small):
    """Width sample s with f0='mean' equals nd.predict(kernel='empirical', f0='mean') of the
    width-n network initialised with seed + s (1e-10); with f0='random' the initialisation
    band and the width band stay apart (over='init' / over='width')."""
    parts, W, arch = small
    steps = [0, 20, 60]
    traj = nd.predict(arch, parts, W, lr=0.3, steps=steps, f0="mean", seed=3, width=128,
                      width_samples=3)
    assert traj.width_draws["test_loss"].shape == (3, 3, 4)
    assert traj.metadata["finite_width"]["seeds"] == [3, 4, 5]
    net = fw.width_arch(arch, 128)
    for s in range(3):
        ref = nd.predict(net, parts, W, lr=0.3, steps=steps, kernel="empirical", f0="mean",
                         seed=3 + s)
        for m in ("test_loss", "train_loss", "test_acc", "consensus_dist"):
            np.testing.assert_allclose(traj.width_draws[m][s], getattr(ref, m), rtol=1e-10,
                                       atol=1e-12)
    with pytest.raises(ValueError, match="over"):  # a mean network has no band over inits
        traj.band("test_loss", over="init")

    rnd = nd.predict(arch, parts, W, lr=0.3, steps=steps, width=128, width_samples=4,
                     samples=8)
    lo_w, hi_w = rnd.band("test_loss", 0.05, 0.95, over="width")
    lo_i, hi_i = rnd.band("test_loss", 0.05, 0.95, over="init")
    np.testing.assert_array_equal(lo_i, rnd.band("test_loss", 0.05, 0.95)[0])
    assert lo_w.shape == lo_i.shape == (3, 4)
    assert not np.allclose(lo_w, lo_i) and np.all(hi_w >= lo_w)
    np.testing.assert_allclose(lo_w, np.quantile(rnd.width_draws["test_loss"], 0.05, axis=0))
    assert "finite width 128" in rnd.summary()


def test_width_band_survives_save_load_and_at_phase(small, tmp_path):
    parts, W, arch = small
    p2pl = nd.algorithms.p2pl(local_steps=2, consensus_steps=1)
    traj = nd.predict(arch, parts, W, lr=0.2, algorithm=p2pl, steps=[0, 4], f0="mean",
                      width=64, width_samples=2)
    back = nd.Trajectory.load(traj.save(tmp_path / "t.npz"))
    for k, v in traj.width_draws.items():
        np.testing.assert_array_equal(back.width_draws[k], v)
    assert back.metadata["finite_width"]["width"] == 64
    local = traj.at_phase("local")
    assert local.width_draws["test_loss"].shape[1] == len(local.steps)


def test_jax_params_are_those_of_init_params():
    net = nd.models.MLP(hidden=(30, 20), out=3)
    for s, p in zip((5, 6), fw.network_params(net, 7, [5, 6]), strict=True):
        q = nd.init_params(net, 7, s)
        assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(q),
                                                         strict=True))


def test_empirical_nngp_converges_to_the_analytic_one():
    x = np.random.default_rng(0).normal(size=(6, 5))
    arch = nd.models.MLP(hidden=(1, 1), out=2)
    errs = []
    for n in (256, 4096):
        net = fw.width_arch(arch, n)
        k = fw.empirical_nngp(net, nd.init_params(net, 5, 0), x)
        errs.append(np.linalg.norm(k - net.nngp(x)) / np.linalg.norm(net.nngp(x)))
    assert errs[1] < errs[0] / 2.5 and errs[1] < 0.1  # measured 0.19 -> 0.061


@pytest.mark.parametrize("kw, match", [
    (dict(width=0), "width: expected a positive integer"),
    (dict(width=64.0), "width: expected a positive integer"),
    (dict(width=64, width_samples=1), "width_samples"),
    (dict(width=64, kernel="empirical"), "width: .*analytic"),
    (dict(width=64, f0="network"), "width: .*over networks"),
    (dict(width=64, rank=5), "width: .*exact kernel path"),
])
def test_predict_width_errors(small, kw, match):
    parts, W, arch = small
    with pytest.raises(ValueError, match=match):
        nd.predict(arch, parts, W, lr=0.3, steps=[0, 1], **kw)


def test_width_needs_an_mlp(small):
    parts, W, _ = small
    with pytest.raises(ValueError, match="width: .*has no hidden layer"):
        nd.predict(nd.models.MLP(hidden=(), out=10), parts, W, lr=0.3, steps=[0, 1], width=8)


@pytest.mark.parametrize("kw, match", [
    (dict(metric="test_lost"), "metric: expected one of"),
    (dict(tol=0.0), "tol: expected a finite number > 0"),
    (dict(tol=float("nan")), "tol"),
    (dict(widths=(128,)), "widths: expected at least two"),
    (dict(widths=(128, -4)), "widths"),
    (dict(level=1.5), "level: expected a number in"),
    (dict(loss="hinge"), "loss: expected one of \\('mse', 'cross_entropy'\\), got 'hinge'"),
    (dict(loss="cross_entropy", logit_scale=0.0), "logit_scale"),
    (dict(batch_size=11), "batch_size: expected at most the smallest shard, 10"),
    (dict(batch_size=-1), "batch_size: expected an integer >= 0"),
    (dict(batch_sampling="shuffle"), "batch_sampling: expected one of"),
])
def test_width_for_errors(small, kw, match):
    parts, W, arch = small
    with pytest.raises(ValueError, match=match):
        nd.width_for(arch, parts, W, lr=0.3, steps=10, **kw)


def test_width_for_meets_its_tolerance_and_is_monotone(small):
    """The returned width's measured 5-95 % half-width is within tol up to the Monte-Carlo
    error of 32 kernels (sd of an sd: 1/sqrt(2 * 31) = 13 %; allowed 40 %); a tolerance
    half as large gives about four times the width."""
    parts, W, arch = small
    kw = dict(lr=0.3, steps=100, metric="test_loss", widths=(128, 512), samples=32, f0="mean")
    est = nd.width_for(arch, parts, W, tol=0.004, **kw)
    assert isinstance(est, nd.WidthEstimate) and est.widths == (128, 512)
    assert est.width == int(np.ceil((est.constant / 0.004) ** 2))
    assert abs(est.slope + 0.5) < 0.25 and est.law_holds
    assert "WidthEstimate(width=" in repr(est) and "test_loss" in repr(est)
    draws, _ = fw.width_draws(arch, parts, W, 0.3, "dgd", 100, width=est.width, samples=32,
                              seed=1000, f0="mean")
    measured = float(np.max(fw.half_width(draws["test_loss"], 0.9)))
    assert measured <= 1.4 * 0.004, (est, measured)
    tighter = nd.width_for(arch, parts, W, tol=0.002, **kw)
    assert tighter.width >= est.width
    assert tighter.width == pytest.approx(4 * est.width, rel=1e-3)
    with pytest.raises(ValueError, match="tol: .*max_width"):
        nd.width_for(arch, parts, W, tol=0.004, max_width=10, **kw)


def test_width_for_cross_entropy_meets_its_tolerance_in_nats(small):
    """width_for(loss="cross_entropy"): the band sized is that of the cross-entropy test loss
    (nats); at the returned width, 32 fresh kernels (seed 1000) measure a 5-95 % half-width
    within tol up to the Monte-Carlo error of 32 kernels (allowed 40 %, as for the squared
    loss; measured 0.0087 against tol 0.01 at width 6284).  The draws are cross-entropy:
    the spreads differ from the squared loss's (> 10 %)."""
    parts, W, arch = small
    kw = dict(lr=0.5, steps=100, metric="test_loss", widths=(256, 1024), samples=32,
              f0="mean")
    est = nd.width_for(arch, parts, W, tol=0.01, loss="cross_entropy", **kw)
    assert est.loss == "cross_entropy" and est.logit_scale == 1.0 and est.batch_size == 0
    assert est.law_holds and est.width == int(np.ceil((est.constant / 0.01) ** 2))
    assert "in nats" in est.quantity and "full batch" in est.quantity
    assert "cross_entropy" in repr(est) and "0.01 nats" in repr(est)
    draws, _ = fw.width_draws(arch, parts, W, 0.5, "dgd", 100, width=est.width, samples=32,
                              seed=1000, f0="mean", loss="cross_entropy")
    measured = float(np.max(fw.half_width(draws["test_loss"], 0.9)))
    assert measured <= 1.4 * 0.01, (est, measured)
    sq = nd.width_for(arch, parts, W, tol=0.01, **dict(kw, samples=8))
    assert sq.loss == "mse" and "squared loss" in sq.quantity
    ce8 = nd.width_for(arch, parts, W, tol=0.01, loss="cross_entropy", **dict(kw, samples=8))
    assert np.all(np.abs(np.log(np.array(ce8.spreads) / sq.spreads)) > np.log(1.1))


def test_width_for_passes_the_loss_and_batches_to_the_width_draws(small):
    """Cross-entropy mini-batch SGD: each measured spread equals the worst agent's 5-95 %
    half-width of fw.width_draws with the same loss, logit scale, batch size and sampled
    sequences (1e-12), and differs from the full-batch cross-entropy spread."""
    parts, W, arch = small
    kw = dict(lr=0.5, steps=[0, 10, 20], widths=(64, 128), samples=3, f0="mean",
              init_samples=4, seed=5, metric="test_loss")
    ce = dict(loss="cross_entropy", logit_scale=2.0)
    est = nd.width_for(arch, parts, W, tol=0.05, batch_size=5, **ce, **kw)
    assert est.batch_size == 5 and est.logit_scale == 2.0
    assert "mini-batch SGD, batch size 5" in est.quantity and "s = 2" in est.quantity
    for n, spread in zip(est.widths, est.spreads, strict=True):
        draws, info = fw.width_draws(arch, parts, W, 0.5, "dgd", kw["steps"], width=n,
                                     samples=3, seed=5, f0="mean", init_samples=4,
                                     batch_size=5, **ce)
        assert info["batch_sequences"] == 4
        assert spread == pytest.approx(float(np.max(fw.half_width(draws["test_loss"]))),
                                       rel=1e-12)
    full = nd.width_for(arch, parts, W, tol=0.05, **ce, **kw)
    assert not np.allclose(full.spreads, est.spreads, rtol=1e-3)


def test_predict_sweep_width_band_equals_one_prediction_per_rate(small):
    """``predict_sweep(..., width=n)``: every rate's width draws (all rates in one batched run
    per network) equal ``predict(..., width=n)`` at that rate to 1e-9 relative; the same
    argument checks name ``width``."""
    parts, W, arch = small
    steps, lrs = [0, 10, 30], [0.1, 0.3]
    # float64 products: the default "mixed" multiplies the sampled networks' columns by
    # float32 kernels, whose rounding depends on the column layout (rates batched or not):
    # 1e-8 relative between the two runs on jax 0.10.2, inside its documented 1e-5
    sweep = nd.predict_sweep(arch, parts, W, lrs, steps=steps, width=64, width_samples=3,
                             samples=8, reference=False, kernel_dtype="float64")
    assert len(sweep) == 2
    for lr, traj in zip(lrs, sweep, strict=True):
        one = nd.predict(arch, parts, W, lr=lr, steps=steps, width=64, width_samples=3,
                         samples=8, reference=False, kernel_dtype="float64")
        assert traj.metadata["finite_width"]["seeds"] == [0, 1, 2]
        for m in ("test_loss", "train_acc"):
            np.testing.assert_allclose(traj.width_draws[m], one.width_draws[m], rtol=1e-9,
                                       atol=1e-12)
            np.testing.assert_allclose(traj.band(m, over="init")[0],
                                       one.band(m, over="init")[0], rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="^width: the finite-width band is for the analytic"):
        nd.predict_sweep(arch, parts, W, lrs, steps=steps, kernel="empirical", width=64)


def test_calibrated_band_from_a_trajectory_equals_the_validation_function(small):
    """``traj.band(m, 0.05, 0.95, over="calibrated")`` of ``nd.predict(..., width=n)`` equals
    ``ntkdyn.validation.coverage.calibrated_band(traj.draws[m], traj.width_draws[m], n)`` on
    the same draws (1e-12; one implementation, ``ntkdyn.bands``), and contains neither
    plain band's ends in general: it is ``CALIBRATED_C`` times the combined half-widths.
    Other levels, a trajectory without ``width=`` or without sampled initialisations are
    ``ValueError``s naming the argument."""
    from ntkdyn import bands
    from ntkdyn.validation import coverage

    parts, W, arch = small
    steps = [0, 5, 20]
    traj = nd.predict(arch, parts, W, lr=0.3, steps=steps, width=128, width_samples=4,
                      samples=8)
    assert coverage.CALIBRATED_C == bands.CALIBRATED_C == 0.9429
    for m in ("test_loss", "train_loss", "test_acc"):
        lo, hi = traj.band(m, 0.05, 0.95, over="calibrated")
        ref_lo, _, ref_hi = coverage.calibrated_band(traj.draws[m], traj.width_draws[m], 128)
        np.testing.assert_allclose(lo, ref_lo, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(hi, ref_hi, rtol=1e-12, atol=1e-12)
        clo, cmid, chi = coverage.add_width_band(traj.draws[m], traj.width_draws[m])
        np.testing.assert_allclose(hi - cmid, bands.CALIBRATED_C * (chi - cmid), atol=1e-12)
    with pytest.raises(ValueError, match="low/high"):
        traj.band("test_loss", 0.25, 0.75, over="calibrated")
    # a metric without per-network draws: named (it said to predict with f0='random' and
    # width=n, which this trajectory was)
    with pytest.raises(ValueError, match="^metric: the calibrated band is for the metrics "
                                         "kept per sampled network, .*got 'param_dist'"):
        traj.band("param_dist", over="calibrated")
    plain = nd.predict(arch, parts, W, lr=0.3, steps=steps, samples=8)
    with pytest.raises(ValueError, match="over"):
        plain.band("test_loss", over="calibrated")
    mean = nd.predict(arch, parts, W, lr=0.3, steps=steps, f0="mean", width=128,
                      width_samples=4)
    with pytest.raises(ValueError, match="over"):
        mean.band("test_loss", over="calibrated")


def test_width_band_with_minibatch_sgd_is_the_full_batch_width_band(small, tmp_path):
    """``width=n`` with ``batch_size > 0`` (squared loss): the width draws are each width-n
    kernel's full-batch dynamics (the expected SGD trajectory of the linearised model),
    equal to the full-batch prediction's width draws with the same kernels and ``z`` to
    1e-12; the paired draws are the infinite-width full-batch draws from the same ``z``
    (1e-12); ``over="calibrated"`` is ``bands.calibrated_band`` of the joint init+batch
    draws with the shift measured against the paired draws (1e-12) and, at width 1024,
    contains the joint band's median at every record (at width 128 the measured shift of
    the mean, -1.1 in test loss at step 20, exceeds the half-width on this tiny problem);
    save/load keeps the paired draws."""
    from ntkdyn import bands

    parts, W, arch = small
    steps = [0, 5, 20, 40]
    kw = dict(lr=0.3, steps=steps, width=1024, width_samples=4, samples=8, reference=False)
    sgd = nd.predict(arch, parts, W, batch_size=5, **kw)
    full = nd.predict(arch, parts, W, **kw)
    assert sgd.metadata["band_over"] == "init+batch"
    assert "full batch" in sgd.metadata["finite_width"]["dynamics"]
    plain = nd.predict(arch, parts, W, lr=0.3, steps=steps, samples=8, reference=False,
                       kernel_dtype="float64")
    for m in ("test_loss", "train_loss", "test_acc"):
        np.testing.assert_allclose(sgd.width_draws[m], full.width_draws[m], rtol=1e-12,
                                   atol=1e-12)
        np.testing.assert_allclose(sgd.width_draws[f"paired/{m}"], plain.draws[m],
                                   rtol=1e-12, atol=1e-12)
        lo, hi = sgd.band(m, 0.05, 0.95, over="calibrated")
        ref_lo, _, ref_hi = bands.calibrated_band(sgd.draws[m], sgd.width_draws[m], 1024,
                                                  paired_draws=plain.draws[m])
        np.testing.assert_allclose(lo, ref_lo, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(hi, ref_hi, rtol=1e-12, atol=1e-12)
        centre = np.quantile(sgd.draws[m], 0.5, axis=0)
        assert np.all(lo <= centre + 1e-12) and np.all(centre <= hi + 1e-12)
        assert np.all(hi - lo > 0)
    back = nd.Trajectory.load(sgd.save(tmp_path / "sgd.npz"))
    np.testing.assert_array_equal(back.band("test_loss", over="calibrated")[1],
                                  sgd.band("test_loss", over="calibrated")[1])
    with pytest.raises(ValueError, match="metric: expected one of"):
        sgd.band("paired/test_loss", over="width")


def test_predict_sweep_width_band_with_minibatch_sgd_matches_predict(small):
    """``predict_sweep(..., width=n, batch_size=B)`` with the squared loss runs every rate's
    main trajectory as mini-batch SGD (it used to drop ``batch_size`` silently and run full
    batch) and keeps the paired full-batch draws: trajectory, width draws, paired draws and
    the calibrated band equal ``predict(..., width=n, batch_size=B)`` at that rate to 1e-9."""
    parts, W, arch = small
    steps, lrs = [0, 10, 30], [0.1, 0.3]
    kw = dict(steps=steps, width=64, width_samples=3, samples=6, reference=False,
              batch_size=4)
    sweep = nd.predict_sweep(arch, parts, W, lrs, **kw)
    full = nd.predict_sweep(arch, parts, W, lrs[:1], **dict(kw, batch_size=0))[0]
    assert not np.allclose(sweep[0].test_loss, full.test_loss, rtol=1e-6)
    for lr, traj in zip(lrs, sweep, strict=True):
        one = nd.predict(arch, parts, W, lr=lr, **kw)
        for m in ("test_loss", "train_acc"):
            np.testing.assert_allclose(traj.draws[m], one.draws[m], rtol=1e-9, atol=1e-12)
            for key in (m, f"paired/{m}"):
                np.testing.assert_allclose(traj.width_draws[key], one.width_draws[key],
                                           rtol=1e-9, atol=1e-12)
            for a, b in zip(traj.band(m, over="calibrated"), one.band(m, over="calibrated"),
                            strict=True):
                np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("metric, loss, unit", [
    ("test_loss", "cross_entropy", "nats"), ("train_loss", "cross_entropy", "nats"),
    ("test_loss", "mse", "squared-loss units"), ("test_acc", "cross_entropy",
                                                 "fraction of samples"),
    ("train_acc", "mse", "fraction of samples")])
def test_width_estimate_repr_and_quantity_name_one_unit(metric, loss, unit):
    """The tolerance's unit has one source, fw.tol_unit: the repr prints ``<= tol <unit>``
    ("<= 0.01 nats" for a cross-entropy loss) and the quantity says ``in <unit>``, the
    same name; no other loss's unit appears in either."""
    est = nd.WidthEstimate(width=100, constant=0.1, slope=-0.5, widths=(128, 512),
                           spreads=(0.0088, 0.0044), metric=metric, tol=0.01, level=0.9,
                           samples=8, loss=loss, logit_scale=2.0 if loss != "mse" else 1.0)
    assert fw.tol_unit(metric, loss)[0] == unit
    assert f"<= 0.01 {unit} at the horizon" in repr(est)
    assert f" in {unit} (" in est.quantity
    others = {"nats", "squared-loss units", "fraction of samples"} - {unit}
    assert not any(o in repr(est) or o in est.quantity for o in others)
    if unit == "nats":
        assert "s = 2" in est.quantity


def test_width_for_arguments_and_zero_spreads(small, monkeypatch):
    """samples=1 was blamed on width_samples, an ndarray of widths was refused as not 'two
    distinct positive integers', max_width=0 blamed tol; a width whose band has zero
    half-width (a discrete metric) was dropped from the fit without a word."""
    from ntkdyn import finite_width

    parts, W, arch = small
    call = dict(lr=0.3, steps=10, metric="test_acc", tol=0.001)
    with pytest.raises(ValueError, match="^samples: expected an integer >= 2"):
        nd.width_for(arch, parts, W, samples=1, **call)
    with pytest.raises(ValueError, match="^max_width: expected a positive integer, got 0"):
        nd.width_for(arch, parts, W, max_width=0, **call)
    with pytest.raises(ValueError, match="^level: "):  # the array of widths got through
        nd.width_for(arch, parts, W, widths=np.array([16, 32]), level=2.0, **call)

    def fake_draws(*args, width, samples, **kw):
        spread = 0.1 if width == 16 else 0.0  # width 32: every sample agrees
        last = np.linspace(0.5 - spread, 0.5 + spread, samples)
        return {"test_acc": np.tile(last[:, None, None], (1, 2, 4))}, {"statuses": {"ok": samples}}

    monkeypatch.setattr(finite_width, "width_draws", fake_draws)
    with pytest.warns(UserWarning, match=r"zero half-width at width\(s\) \[32\]"):
        est = nd.width_for(arch, parts, W, widths=(16, 32), samples=3, **call)
    assert est.spreads[1] == 0.0 and est.width > 32
