"""Golden training dynamics from neural-tangents 0.6.5 (``nt_golden_dynamics.npz``).

Reference values for issue 14 (distribution of outputs over initialisations:
``nt.predict.gradient_descent_mse_ensemble``) and issue 15 (cross-entropy:
``nt.predict.gradient_descent``), on one small problem.

How to run (from the repository root; neural-tangents lives in a separate
reference environment, never in the project's ``.venv``)::

    "$(../shared/tools/nt-reference-env.sh)" tests/data/make_nt_golden_dynamics.py

This rewrites ``tests/data/nt_golden_dynamics.npz`` (about 30 kB) and prints
the checks below. Deterministic (``numpy.random.default_rng(2)``; analytic
kernels only, no JAX randomness) and float64 (``jax_enable_x64``).

Versions used for the committed file: neural-tangents 0.6.5, jax 0.4.38,
jaxlib 0.4.38, CPU backend; stored in the file (``meta/nt_version``,
``meta/jax_version``).

Conventions (float64; samples first, outputs last; traced kernels)
-------------------------------------------------------------------
Network: ``stax.serial(Dense(512), Relu(), Dense(512), Relu(), Dense(3))``, every
Dense with ``W_std=1.4, b_std=0.1, parameterization='ntk'``; only its analytic
``kernel_fn`` is used (the width 512 does not enter). Kernels are traced: the
kernel of the 3-output network is ``k (x) I_3``; NT applies them to each output
column separately (``trace_axes=(-1,)``).

Time and learning rate. NT has NO discrete-step predictor: every function used
here is a continuous-time ODE, and ``t`` is in NT's units with
``absolute_time = learning_rate * t``. NT's losses are means over ALL
``y_train.size = N*K`` entries:

* MSE (``gradient_descent_mse_ensemble``):
  ``d f/dt = -(lr / (N*K)) k (f - y)``, i.e. the loss ``0.5/(N K) ||f - y||^2``.
* cross-entropy (``gradient_descent`` with
  ``loss = lambda fx, y_hat: -jnp.mean(jax.nn.log_softmax(fx) * y_hat)``):
  the loss is ``(1/(N K)) sum_i CE_i`` (one-hot ``y``), so
  ``d f/dt = -(lr / (N*K)) k (softmax(f) - y)``.

ntkdyn's losses are ``1/(2N) sum_i ||f_i - y_i||^2`` and ``(1/N) sum_i CE_i``
(one agent) with flow ``d f/dt = -(eta/N) k (grad)`` in steps, so
``eta = lr / K`` and the times are the SAME numbers (``t`` here = steps there).
The script checks both conventions against independent scipy closed forms /
ODE solutions and shows that ``eta = lr`` (normalising by ``N``) is off.
Measured for the committed file: ensemble vs the expm closed form 7.1e-15 (ntk)
and 8.9e-15 (nngp), 0.66 / 1.3 with the ``N`` normalisation; cross-entropy vs
scipy's DOP853 4.1e-8 (NT's odeint tolerance), 0.92 with the ``N`` normalisation.

Keys
----
meta/nt_version, meta/jax_version   version strings.
inputs/x_train (12, 5), inputs/x_test (6, 5)
                                    rng = np.random.default_rng(2): x_train, then
                                    x_test, standard normal.
inputs/y_train (12, 3), inputs/y_test (6, 3)
                                    one-hot labels: rng.permutation(np.arange(12) % 3),
                                    then rng.permutation(np.arange(6) % 3).
kernels/{ntk,nngp}_train_train (12, 12)  kernel_fn(x_train, None, get).
kernels/{ntk,nngp}_test_train (6, 12)    kernel_fn(x_test, x_train, get).
kernels/{ntk,nngp}_test_test (6, 6)      kernel_fn(x_test, None, get).
kernels/settings (3,)               [W_std, b_std, hidden_layers] = [1.4, 0.1, 2].

E. ``predict_fn = nt.predict.gradient_descent_mse_ensemble(kernel_fn, x_train,
   y_train, learning_rate=lr, diag_reg=0.)``; for get in ("ntk", "nngp"):
   ``predict_fn(t, x_test, get, compute_cov=True)`` (test inputs) and
   ``predict_fn(t, None, get, compute_cov=True)`` (training inputs).
ensemble/learning_rate ()           lr = 1.5 (NT units; ntkdyn eta = lr / 3 = 0.5).
ensemble/t (6,)                     [0, 1, 5, 20, 100, 500].
ensemble/{get}/test_mean (6, 6, 3)  mean over initialisations of f_t(x_test).
ensemble/{get}/test_cov (6, 6, 6)   covariance of one output column of f_t(x_test)
                                    (identical for every column).
ensemble/{get}/train_mean (6, 12, 3), ensemble/{get}/train_cov (6, 12, 12)
                                    same on the training inputs.
   Meaning: an infinite ensemble of infinitely wide networks, f_0 ~ GP(0, nngp)
   independent over outputs, trained by gradient flow on the MSE with the
   training kernel k = ntk (get="ntk") or k = nngp (get="nngp": only the
   readout layer trained). With B_t = k^{-1}(I - expm(-lr t k / (N K))), f_t on the
   test inputs is f0_test - k_test_train B_t (f0_train - y), so
       mean = k_test_train B_t y,
       cov  = nngp_test_test - (k_test_train B_t nngp_train_test + transpose)
              + k_test_train B_t nngp_train_train B_t k_train_test,
   and on the training inputs f_t = y + expm(-lr t k/(N K))(f0_train - y).
ensemble/check_err ()               max abs difference of all the above from that
                                    closed form evaluated with scipy.linalg.expm.

G. ``predict_fn = nt.predict.gradient_descent(loss, k_train_train, y_train,
   learning_rate=lr, momentum=None, trace_axes=(-1,))`` with the softmax
   cross-entropy loss above and k = ntk; ``predict_fn(t, f0_train, f0_test,
   k_test_train)`` (NT integrates with ``jax.experimental.ode.odeint`` at its
   default rtol = atol = 1.4e-8).
ce/learning_rate ()                 lr = 3.0 (NT units; ntkdyn eta = lr / 3 = 1.0).
ce/t (6,)                           [0, 1, 5, 20, 100, 400].
ce/f0_train (12, 3), ce/f0_test (6, 3)
                                    one draw of f_0 ~ GP(0, nngp) on [x_train; x_test]:
                                    L = cholesky(nngp_all + 1e-12 I), f0 = L @ z,
                                    z = rng.standard_normal((18, 3)) (after the labels).
ce/fx_train_t (6, 12, 3), ce/fx_test_t (6, 6, 3)
                                    NT's outputs (logits) at each t.
ce/check_err ()                     max abs difference from scipy solve_ivp (DOP853,
                                    rtol = atol = 1e-12) of the ODE above.
"""

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np
import scipy.integrate
import scipy.linalg

jax.config.update("jax_enable_x64", True)

import neural_tangents as nt  # noqa: E402
from neural_tangents import stax  # noqa: E402

W_STD, B_STD, DEPTH = 1.4, 0.1, 2
ENSEMBLE_LR, ENSEMBLE_T = 1.5, np.array([0.0, 1.0, 5.0, 20.0, 100.0, 500.0])
CE_LR, CE_T = 3.0, np.array([0.0, 1.0, 5.0, 20.0, 100.0, 400.0])


def kernel_fn_of_network():
    def dense(n):
        return stax.Dense(n, W_std=W_STD, b_std=B_STD, parameterization="ntk")

    layers = []
    for _ in range(DEPTH):
        layers += [dense(512), stax.Relu()]
    return stax.serial(*layers, dense(3))[2]


def ensemble_closed_form(k, k_td, nngp_dd, nngp_td, nngp_tt, y, lr, t):
    """Independent numpy/scipy version of NT's ensemble (see docstring, E)."""
    n = y.size
    out = {"test_mean": [], "test_cov": [], "train_mean": [], "train_cov": []}
    for ti in t:
        decay = scipy.linalg.expm(-lr * ti * k / n)
        b = np.linalg.solve(k, np.eye(len(k)) - decay)
        out["test_mean"].append(k_td @ b @ y)
        cross = k_td @ b @ nngp_td.T
        out["test_cov"].append(nngp_tt - cross - cross.T + k_td @ b @ nngp_dd @ b.T @ k_td.T)
        out["train_mean"].append((np.eye(len(k)) - decay) @ y)
        out["train_cov"].append(decay @ nngp_dd @ decay.T)
    return {key: np.array(v) for key, v in out.items()}


def ce_reference(k, k_td, y, f0, f0_t, lr, t, norm):
    """scipy ODE: d f/dt = -(lr/norm) k (softmax(f) - y), same for test with k_td."""
    n, kk = y.shape
    m = f0_t.shape[0]

    def rhs(_, z):
        f = z[: n * kk].reshape(n, kk)
        p = np.exp(f - f.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        g = (lr / norm) * (p - y)
        return np.concatenate([-(k @ g).ravel(), -(k_td @ g).ravel()])

    z0 = np.concatenate([f0.ravel(), f0_t.ravel()])
    sol = scipy.integrate.solve_ivp(rhs, (0.0, t[-1]), z0, method="DOP853", t_eval=t,
                                    rtol=1e-12, atol=1e-12)
    assert sol.success, sol.message
    zs = sol.y.T
    return zs[:, : n * kk].reshape(len(t), n, kk), zs[:, n * kk:].reshape(len(t), m, kk)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=None,
                        help="default: nt_golden_dynamics.npz next to this script")
    args = parser.parse_args()
    path = args.output or os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                       "nt_golden_dynamics.npz")
    print(f"neural-tangents {nt.__version__}, jax {jax.__version__}")

    rng = np.random.default_rng(2)
    x_train = rng.standard_normal((12, 5))
    x_test = rng.standard_normal((6, 5))
    y_train = np.eye(3)[rng.permutation(np.arange(12) % 3)]
    y_test = np.eye(3)[rng.permutation(np.arange(6) % 3)]
    out = {"inputs/x_train": x_train, "inputs/x_test": x_test,
           "inputs/y_train": y_train, "inputs/y_test": y_test,
           "kernels/settings": np.array([W_STD, B_STD, DEPTH], dtype=np.float64)}

    kernel_fn = kernel_fn_of_network()
    kdd = kernel_fn(x_train, None, ("nngp", "ntk"))
    ktd = kernel_fn(x_test, x_train, ("nngp", "ntk"))
    ktt = kernel_fn(x_test, None, ("nngp", "ntk"))
    for get in ("ntk", "nngp"):
        out[f"kernels/{get}_train_train"] = np.asarray(getattr(kdd, get))
        out[f"kernels/{get}_test_train"] = np.asarray(getattr(ktd, get))
        out[f"kernels/{get}_test_test"] = np.asarray(getattr(ktt, get))
    ntk_dd = out["kernels/ntk_train_train"]
    print(f"[K] eig(ntk_train_train) in [{np.linalg.eigvalsh(ntk_dd)[0]:.3f}, "
          f"{np.linalg.eigvalsh(ntk_dd)[-1]:.3f}]")

    # ---------------------------------------------------------------- E: MSE ensemble
    predict_fn = nt.predict.gradient_descent_mse_ensemble(
        kernel_fn, x_train, y_train, learning_rate=ENSEMBLE_LR, diag_reg=0.0)
    out["ensemble/learning_rate"] = np.array(ENSEMBLE_LR)
    out["ensemble/t"] = ENSEMBLE_T
    nngp_dd = out["kernels/nngp_train_train"]
    nngp_td = out["kernels/nngp_test_train"]
    nngp_tt = out["kernels/nngp_test_test"]
    errs = []
    for get in ("ntk", "nngp"):
        test = predict_fn(ENSEMBLE_T, x_test, get, compute_cov=True)
        train = predict_fn(ENSEMBLE_T, None, get, compute_cov=True)
        got = {"test_mean": test.mean, "test_cov": test.covariance,
               "train_mean": train.mean, "train_cov": train.covariance}
        k = out[f"kernels/{get}_train_train"]
        k_td = out[f"kernels/{get}_test_train"]
        for norm, label in ((y_train.size, "N*K"), (y_train.shape[0], "N")):
            ref = ensemble_closed_form(k, k_td, nngp_dd, nngp_td, nngp_tt, y_train,
                                       ENSEMBLE_LR * y_train.size / norm, ENSEMBLE_T)
            err = max(float(np.max(np.abs(np.asarray(got[key]) - ref[key]))) for key in ref)
            print(f"[E] {get}: NT vs expm closed form with loss normalised by {label}: "
                  f"max abs err {err:.1e}")
            if label == "N*K":
                errs.append(err)
                assert err < 1e-8, err
            else:
                assert err > 1e-3, err
        for key, val in got.items():
            out[f"ensemble/{get}/{key}"] = np.asarray(val)
        print(f"[E] {get}: test variance (mean over inputs) at t = {ENSEMBLE_T.tolist()}: "
              f"{np.round(np.trace(np.asarray(test.covariance), axis1=1, axis2=2) / 6, 3)}")
    out["ensemble/check_err"] = np.array(max(errs))

    # ---------------------------------------------------------------- G: cross-entropy
    nngp_all = np.block([[nngp_dd, nngp_td.T], [nngp_td, nngp_tt]])
    chol = np.linalg.cholesky(nngp_all + 1e-12 * np.eye(18))
    f0 = chol @ rng.standard_normal((18, 3))
    f0_train, f0_test = f0[:12], f0[12:]

    def loss(fx, y_hat):
        return -jnp.mean(jax.nn.log_softmax(fx) * y_hat)

    ntk_td = out["kernels/ntk_test_train"]
    predict_ce = nt.predict.gradient_descent(loss, ntk_dd, y_train, learning_rate=CE_LR,
                                             momentum=None, trace_axes=(-1,))
    fx_train_t, fx_test_t = predict_ce(CE_T, f0_train, f0_test, ntk_td)
    fx_train_t, fx_test_t = np.asarray(fx_train_t), np.asarray(fx_test_t)
    for norm, label in ((y_train.size, "N*K"), (y_train.shape[0], "N")):
        ref_tr, ref_te = ce_reference(ntk_dd, ntk_td, y_train, f0_train, f0_test,
                                      CE_LR, CE_T, norm)
        err = max(np.max(np.abs(ref_tr - fx_train_t)), np.max(np.abs(ref_te - fx_test_t)))
        print(f"[G] cross-entropy: NT vs scipy ODE with loss normalised by {label}: "
              f"max abs err {err:.1e}")
        if label == "N*K":
            ce_err = err
            assert err < 1e-6, err
        else:
            assert err > 1e-3, err
    acc = (fx_test_t.argmax(-1) == y_test.argmax(-1)).mean(-1)
    print(f"[G] test accuracy at t = {CE_T.tolist()}: {acc}")
    out.update({
        "ce/learning_rate": np.array(CE_LR), "ce/t": CE_T,
        "ce/f0_train": f0_train, "ce/f0_test": f0_test,
        "ce/fx_train_t": fx_train_t, "ce/fx_test_t": fx_test_t,
        "ce/check_err": np.array(ce_err),
    })

    arrays = {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}
    for k, v in arrays.items():
        assert np.all(np.isfinite(v)), k
    arrays["meta/nt_version"] = np.array(nt.__version__)
    arrays["meta/jax_version"] = np.array(jax.__version__)
    np.savez_compressed(path, **arrays)
    print(f"wrote {len(arrays)} arrays to {path} ({os.path.getsize(path) / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
