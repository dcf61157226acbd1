"""Command-line failures are clear (issue 12): exit 2 with one line naming the file or key
and nothing written; Ctrl-C exits 130 saying what was kept; ``--version``."""

from __future__ import annotations

import gzip
import importlib
import os
import signal
import sys

import numpy as np
import pytest

from ntkdyn.cli import main

TINY = """
seed = 1
[data]
source = "digits"
classes = [0, 1, 2]
n_train = 60
n_test = 30
[partition]
agents = 3
[topology]
name = "path"
[architecture]
depth = 1
width = 64
[training]
algorithm = "atc"
lr = 0.3
steps = 40
record_every = 10
"""


def _config(tmp_path, text=TINY):
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


def _error_line(capsys) -> str:
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    return lines[0]


def test_version(capsys):
    import ntkdyn

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"ntkdyn {ntkdyn.__version__}"


# ----------------------------------------------------------------- output location
@pytest.mark.parametrize("command", ["predict", "validate"])
@pytest.mark.parametrize("where", ["file", "under_file"])
def test_out_that_cannot_be_a_folder_is_refused_before_computing(tmp_path, capsys,
                                                                 monkeypatch, command, where):
    import ntkdyn.config.experiment

    def no_compute(*args, **kwargs):
        raise AssertionError("computed before checking --out")

    monkeypatch.setattr(ntkdyn.config.experiment, "build_data", no_compute)
    blocker = tmp_path / "taken"
    blocker.write_text("keep me")
    out = blocker if where == "file" else blocker / "sub" / "out"
    cfg = _config(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main([command, str(cfg), "--out", str(out), "--quiet"]) == 2
    line = _error_line(capsys)
    assert "--out" in line and str(blocker) in line
    assert blocker.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc")
def test_out_in_an_unwritable_place_is_refused(tmp_path, capsys):
    assert main(["predict", str(_config(tmp_path)), "--out", "/proc/ntkdyn-out", "--quiet"]) == 2
    assert "--out: cannot write to /proc" in _error_line(capsys)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                    reason="permissions do not bind root")
def test_out_in_a_read_only_folder_is_refused(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        assert main(["validate", str(_config(tmp_path)), "--out", str(ro / "o"),
                     "--quiet"]) == 2
        assert f"--out: cannot write to {ro}" in _error_line(capsys)
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o700)


def test_check_edge_cache_under_a_file_is_refused(tmp_path, capsys):
    blocker = tmp_path / "taken"
    blocker.write_text("")
    assert main(["check", str(_config(tmp_path)), "--measure-edge", "--cache",
                 str(blocker / "cache"), "--quiet"]) == 2
    assert "--cache" in _error_line(capsys)


# ----------------------------------------------------------------- corrupt data files
def _mnist_config(tmp_path):
    return _config(tmp_path, TINY.replace('source = "digits"',
                                          'source = "mnist"\npath = "mnist"'))


def _write_mnist(directory):
    directory.mkdir()
    rng = np.random.default_rng(0)
    for name, arr in (("train-images-idx3-ubyte", rng.integers(0, 256, (90, 3, 4))),
                      ("train-labels-idx1-ubyte", np.arange(90) % 10),
                      ("t10k-images-idx3-ubyte", rng.integers(0, 256, (40, 3, 4))),
                      ("t10k-labels-idx1-ubyte", np.arange(40) % 10)):
        raw = bytes([0, 0, 8, arr.ndim]) + np.array(arr.shape, ">u4").tobytes()
        (directory / f"{name}.gz").write_bytes(gzip.compress(raw + arr.astype(np.uint8)
                                                             .tobytes()))


@pytest.mark.parametrize("damage", ["truncated", "not_gzip"])
def test_corrupt_mnist_file_exit_2_names_the_file(tmp_path, capsys, damage):
    _write_mnist(tmp_path / "mnist")
    f = tmp_path / "mnist" / "train-images-idx3-ubyte.gz"
    f.write_bytes(f.read_bytes()[:50] if damage == "truncated" else b"not gzip at all")
    out = tmp_path / "out"
    assert main(["predict", str(_mnist_config(tmp_path)), "--out", str(out), "--quiet"]) == 2
    line = _error_line(capsys)
    assert "train-images-idx3-ubyte.gz" in line and "config: data.path" in line
    assert not out.exists()


def test_garbage_cifar_batch_exit_2_names_the_file(tmp_path, capsys):
    folder = tmp_path / "cifar"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(b"\x80\x04garbage")
    cfg = _config(tmp_path, TINY.replace('source = "digits"', 'source = "cifar10"\npath = '
                                                              '"cifar"'))
    assert main(["validate", str(cfg), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    assert "data_batch_1: not a CIFAR-10 batch" in _error_line(capsys)
    assert not (tmp_path / "out").exists()


def test_an_output_name_taken_by_a_folder_is_refused_before_computing(tmp_path, capsys,
                                                                     monkeypatch):
    """``--out`` holding a folder named like one of predict's files: exit 2 naming --out
    before any kernel (it computed for 10 s, moved three of the four files in and failed
    naming the staging folder); staged_output refuses such a clash before moving any."""
    import ntkdyn.prediction
    from ntkdyn._utils.io import OutputError, staged_output

    def never(*args, **kwargs):
        raise AssertionError("computed before refusing the output folder")

    monkeypatch.setattr(ntkdyn.prediction, "predict", never)
    out = tmp_path / "out"
    (out / "trajectory.png").mkdir(parents=True)
    assert main(["predict", str(_config(tmp_path)), "--out", str(out), "--quiet"]) == 2
    assert _error_line(capsys) == (f"ntkdyn predict: error: --out: {out / 'trajectory.png'} "
                                   "is a folder where the output file trajectory.png goes; "
                                   "remove it or choose another folder")
    assert sorted(p.name for p in out.iterdir()) == ["trajectory.png"]
    with pytest.raises(OutputError, match="summary.json is a folder where the output file "
                                          "summary.json goes"):
        with staged_output(out) as tmp:
            (out / "summary.json").mkdir()
            for name in ("a.txt", "summary.json", "z.txt"):
                (tmp / name).write_text("x")
    assert sorted(p.name for p in out.iterdir()) == ["summary.json", "trajectory.png"]


# ----------------------------------------------------------------- Ctrl-C
def test_ctrl_c_in_predict_exit_130_without_traceback(tmp_path, capsys, monkeypatch):
    import ntkdyn.prediction

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ntkdyn.prediction, "predict", interrupt)
    out = tmp_path / "out"
    assert main(["predict", str(_config(tmp_path)), "--out", str(out), "--quiet"]) == 130
    line = _error_line(capsys)
    assert "interrupted" in line and f"nothing was written to {out}" in line
    assert not out.exists()


def test_ctrl_c_in_check_exit_130(tmp_path, capsys, monkeypatch):
    check_module = importlib.import_module("ntkdyn.preflight")  # ntkdyn.preflight is the function

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(check_module, "check", interrupt)
    assert main(["check", str(_config(tmp_path)), "--quiet"]) == 130
    assert "interrupted" in _error_line(capsys)


def test_undecided_stability_exit_3_with_one_line(tmp_path, capsys, monkeypatch):
    """The bounded stable-set search giving up is an answer on one line (exit 3), not a
    traceback; any other RuntimeError is still raised."""
    from ntkdyn.dynamics.stability import StabilityUndecided

    check_module = importlib.import_module("ntkdyn.preflight")

    def undecided(*args, **kwargs):
        raise StabilityUndecided("stable_set: dgd is stable at every rate tried up to 1e6")

    monkeypatch.setattr(check_module, "check", undecided)
    assert main(["check", str(_config(tmp_path)), "--quiet"]) == 3
    line = _error_line(capsys)
    assert line.startswith("ntkdyn check: stability undecided: stable_set: dgd is stable")

    def broken(*args, **kwargs):
        raise RuntimeError("a defect")

    monkeypatch.setattr(check_module, "check", broken)
    with pytest.raises(RuntimeError, match="a defect"):
        main(["check", str(_config(tmp_path)), "--quiet"])


def test_ctrl_c_in_validate_checkpoints_and_says_resume(tmp_path, capsys, monkeypatch):
    """Ctrl-C inside the second training chunk (long before the 30 s checkpoint interval):
    the first chunk is checkpointed at the interrupt and --resume continues from it, to the
    same result as an uninterrupted run."""
    import ntkdyn as nd
    import ntkdyn.training.trainer as train_mod

    cfg = _config(tmp_path, TINY.replace("steps = 40", "steps = 120"))
    args = ["validate", str(cfg), "--quiet", "--kernels", "analytic", "--no-linearised"]
    assert main(args + ["--out", str(tmp_path / "full")]) == 0
    real, calls = train_mod._run_chunk, []

    def interrupted_chunk(*a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(train_mod, "_run_chunk", interrupted_chunk)
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(args + ["--out", str(out)]) == 130
    line = _error_line(capsys)
    assert "interrupted" in line and "--resume" in line
    assert "nonlinear_w64 at step 90" in line  # the first chunk: 10 records of 10 steps
    assert (out / "checkpoints" / "nonlinear_w64.npz").is_file()
    monkeypatch.setattr(train_mod, "_run_chunk", real)
    assert main(args + ["--out", str(out), "--resume"]) == 0
    resumed = nd.Trajectory.load(out / "observed.npz")
    full = nd.Trajectory.load(tmp_path / "full" / "observed.npz")
    assert resumed.metadata["training"]["resumed_from_step"] == 90
    np.testing.assert_array_equal(resumed.test_loss, full.test_loss)


@pytest.fixture
def default_sigint():
    """Python's own SIGINT handler for the test (a pytest-xdist worker, or an earlier test,
    may have replaced it), the previous one restored after; skipped where a handler cannot
    be set (not the main thread)."""
    try:
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    except ValueError:
        pytest.skip("signal handlers can only be set in the main thread")
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.skipif(not hasattr(signal, "SIGINT") or os.name != "posix", reason="POSIX signal")
def test_real_ctrl_c_in_validate_finishes_the_chunk_and_checkpoints_it(tmp_path, capsys,
                                                                      monkeypatch,
                                                                      default_sigint):
    """A real SIGINT during the second chunk: the chunk's buffers are donated to jit, so the
    run finishes that chunk, checkpoints it (step 190, not the 30 s schedule) and stops;
    --resume then gives the uninterrupted result bit for bit."""
    import ntkdyn as nd
    import ntkdyn.training.trainer as train_mod

    cfg = _config(tmp_path, TINY.replace("steps = 40", "steps = 250"))
    args = ["validate", str(cfg), "--quiet", "--kernels", "analytic", "--no-linearised"]
    assert main(args + ["--out", str(tmp_path / "full")]) == 0
    real, calls = train_mod._run_chunk, []

    def signalled_chunk(*a, **kw):
        out = real(*a, **kw)
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C in the terminal
        return out

    monkeypatch.setattr(train_mod, "_run_chunk", signalled_chunk)
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(args + ["--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and "nonlinear_w64 at step 190" in err and "--resume" in err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
    monkeypatch.setattr(train_mod, "_run_chunk", real)
    assert main(args + ["--out", str(out), "--resume"]) == 0
    resumed = nd.Trajectory.load(out / "observed.npz")
    full = nd.Trajectory.load(tmp_path / "full" / "observed.npz")
    assert resumed.metadata["training"]["resumed_from_step"] == 190
    np.testing.assert_array_equal(resumed.test_loss, full.test_loss)
    np.testing.assert_array_equal(resumed.param_dist, full.param_dist)


# ------------------------------------------------- the command itself (a real process)
def _python(code: str, *args: str, **kw):
    import subprocess

    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True,
                          text=True, timeout=120, **kw)


def test_console_skips_the_teardown_after_ctrl_c_only():
    """``ntkdyn`` (``cli.console``): status 130 ends the process with ``os._exit`` once the
    streams are flushed (an interpreter teardown under XLA's compile threads segfaulted,
    exit 139), so an ``atexit`` hook does not run; any other status exits normally."""
    code = ("import atexit, sys; import ntkdyn.cli as cli\n"
            "atexit.register(lambda: print('TEARDOWN', file=sys.stderr))\n"
            "status = int(sys.argv[1])\n"
            "def fake(argv=None):\n"
            "    print('said before exit', end='')\n"
            "    return status\n"
            "cli.main = fake\n"
            "cli.console([])\n")
    interrupted = _python(code, "130")
    assert interrupted.returncode == 130
    assert interrupted.stdout == "said before exit"  # flushed before os._exit
    assert "TEARDOWN" not in interrupted.stderr
    normal = _python(code, "2")
    assert normal.returncode == 2 and "TEARDOWN" in normal.stderr


@pytest.mark.skipif(os.name != "posix", reason="POSIX signal")
def test_real_ctrl_c_of_the_command_exits_130_and_writes_nothing(tmp_path):
    """The command (``cli.console``) running ``predict``, a real SIGINT once the progress
    bar shows: exit 130 (not 139), the "interrupted" line last, no traceback, no output
    folder."""
    import subprocess
    import time

    cfg = _config(tmp_path, TINY.replace("steps = 40", "steps = 200000")
                  .replace("record_every = 10", "record_every = 1000"))
    out = tmp_path / "out"
    # Python's own SIGINT handler in the child (a test runner may have SIGINT ignored,
    # which the child would inherit); no preexec_fn, which would fork a threaded process
    start = ("import signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
             "from ntkdyn.cli import console; console()")
    proc = subprocess.Popen(
        [sys.executable, "-c", start, "predict", str(cfg), "--out", str(out)],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    seen, t0 = "", time.monotonic()
    try:
        while "step/s" not in seen and "/200000" not in seen and time.monotonic() - t0 < 90:
            seen += proc.stderr.read(1)
        proc.send_signal(signal.SIGINT)
        rest = proc.communicate(timeout=60)[1]
    finally:
        proc.kill()
    err = (seen + rest).replace("\r", "\n")
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("ntkdyn predict: interrupted (Ctrl-C)")
    assert not out.exists()


@pytest.mark.skipif(os.name != "posix", reason="POSIX signal")
def test_ctrl_c_that_python_drops_still_stops_the_command(tmp_path):
    """A Ctrl-C that lands in a garbage-collection callback (JAX's, while it initialises
    and compiles) was "Exception ignored" and lost: the command ran on, wrote its outputs
    and exited 0.  Simulated here by a SIGINT sent from a gc callback once ``console`` has
    started: exit 130, the "interrupted" line, nothing written, no "Exception ignored"."""
    cfg, out = _config(tmp_path), tmp_path / "out"
    code = ("import gc, os, signal, sys\n"
            "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
            "import ntkdyn.cli as cli\n"
            "real = cli.main\n"
            "def dropped(phase, info):\n"
            "    gc.callbacks.remove(dropped)\n"
            "    os.kill(os.getpid(), signal.SIGINT)\n"
            "    for _ in range(100): pass  # the handler runs here, inside the callback\n"
            "def main(argv=None):\n"
            "    gc.callbacks.append(dropped)\n"
            "    gc.collect()\n"
            "    print('went on after the dropped interrupt', file=sys.stderr)\n"
            "    return real(argv)\n"
            "cli.main = main\n"
            "cli.console()\n")
    run = _python(code, "predict", str(cfg), "--out", str(out), "--quiet")
    assert "went on after the dropped interrupt" in run.stderr
    assert run.returncode == 130, run.stderr[-2000:]
    assert "Exception ignored" not in run.stderr and "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines()[-1].startswith("ntkdyn predict: interrupted")
    assert not out.exists()


def test_python_dash_m_ntkdyn():
    """``python -m ntkdyn`` is the command (``ntkdyn/__main__.py``)."""
    import ntkdyn

    run = _python("import runpy; runpy.run_module('ntkdyn', run_name='__main__')", "--version")
    assert run.returncode == 0 and run.stdout.strip() == f"ntkdyn {ntkdyn.__version__}"


# ----------------------------------------------------------------- horizon
@pytest.mark.parametrize("command", ["predict", "check"])
@pytest.mark.parametrize("extra, key", [
    ("steps = 100000000000\n", "training.steps: expected at most 1,000,000,000"),
    ("steps = 200000000\nrecord_every = 1\n",
     "training.record_every: expected at most 10,000,000 recorded steps"),
])
def test_horizon_too_long_is_a_config_error_naming_the_key(tmp_path, capsys, command, extra,
                                                            key):
    """``training.steps = 1e11`` was a numpy MemoryError traceback (exit 1): the recorded
    steps were materialised (37 GB) before anything checked them."""
    text = TINY.replace("steps = 40\nrecord_every = 10\n", extra)
    out = tmp_path / "out"
    args = [command, str(_config(tmp_path, text)), "--quiet"]
    assert main(args + ["--out", str(out)] if command == "predict" else args) == 2
    line = _error_line(capsys)
    assert key in line, line
    assert not out.exists()


@pytest.mark.skipif(os.name != "posix", reason="POSIX signal")
def test_the_commands_handler_leaves_validate_its_chunk_deferral(default_sigint):
    """The command's own SIGINT handler (stop 53, ntkdyn/_utils/interrupt.py) must not
    turn off validate's deferral of Ctrl-C to the end of the running chunk (it was active
    only over Python's own handler), so the chunk is still checkpointed at Ctrl-C."""
    from ntkdyn._utils import interrupt
    from ntkdyn.training.checkpoint import InterruptGuard

    hook = sys.unraisablehook
    try:
        interrupt.install()
        installed = signal.getsignal(signal.SIGINT)
        assert installed is not signal.default_int_handler
        guard = InterruptGuard(active=True)
        assert signal.getsignal(signal.SIGINT) == guard._handle  # deferring
        guard.release()
        assert signal.getsignal(signal.SIGINT) is installed
    finally:
        sys.unraisablehook = hook
