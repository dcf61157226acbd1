"""Generate golden reference values from neural-tangents 0.6.5 (``nt_golden.npz``).

How to run (from the repository root; neural-tangents must NOT be installed in
the project's own ``.venv``, it lives in a separate reference environment)::

    "$(../shared/tools/nt-reference-env.sh)" tests/data/make_nt_golden.py

This rewrites ``tests/data/nt_golden.npz`` (about 140 kB) and prints the
versions used plus the numerical checks below. Add ``--quadrature-study`` to
also print the convergence table of the numerical-quadrature activations
(takes a few minutes). Everything is deterministic (fixed numpy seeds, fixed
``jax.random.PRNGKey(1)``) and computed in float64 (``jax_enable_x64``).

Versions used for the committed file: neural-tangents 0.6.5, jax 0.4.38,
jaxlib 0.4.38, numpy 2.4.6, scipy 1.17.1, CPU backend. The exact nt / jax
versions are stored in the file (``meta/nt_version``, ``meta/jax_version``).

Conventions (all numeric arrays float64; samples first, outputs last)
---------------------------------------------------------------------
Every network uses NT's NTK parameterisation: a Dense layer with ``W_std``,
``b_std`` computes ``y = (W_std / sqrt(fan_in)) * x @ W + b_std * b`` where the
stored parameters ``W`` (fan_in, fan_out) and ``b`` are i.i.d. N(0, 1) draws,
and the (empirical) NTK is J J^T with J the Jacobian w.r.t. these raw W, b.

Keys
----
meta/nt_version, meta/jax_version   version strings (numpy unicode scalars).
meta/quadrature_deg                 string, Gauss-Hermite degree D used below.

A. Analytic (infinite-width) kernels, ``kernel_fn`` of
   ``stax.serial(*([Dense(512, W_std, b_std), ACT] * L), Dense(1, W_std, b_std))``
   (the hidden width 512 does not enter the analytic kernel).
inputs/x1 (6, 5), inputs/x2 (4, 5)  rng = np.random.default_rng(0);
                                    x1 = rng.standard_normal((6, 5)); then x2 = ...((4, 5)).
analytic/settings (2, 2)            rows S = 0, 1: [W_std, b_std] = [1.4, 0.1], [1.0, 0.0].
                                    b_std = 0.0 is accepted by stax.Dense and gives
                                    kernels bit-identical to b_std=None (checked).
analytic/{ACT}/d{L}/s{S}/nngp_12    (6, 4) NNGP kernel K(x1, x2), L = 1..4 hidden layers.
analytic/{ACT}/d{L}/s{S}/ntk_12     (6, 4) NTK Theta(x1, x2).
analytic/{ACT}/d{L}/s{S}/nngp_11    (6, 6) NNGP kernel K(x1, x1) (kernel_fn(x1, None)).
analytic/{ACT}/d{L}/s{S}/ntk_11     (6, 6) NTK Theta(x1, x1).
   ACT: relu = stax.Relu(); leaky_relu = stax.LeakyRelu(0.1); abs = stax.Abs();
   erf = stax.Erf() (a=1, b=1, c=0: phi(x) = erf(x)); identity = stax.Identity();
   gelu = stax.Gelu(approximate=False) (closed form);
   tanh, softplus, sigmoid = stax.ElementwiseNumerical(jnp.tanh | jax.nn.softplus
   | jax.nn.sigmoid, deg=D) (Gauss-Hermite quadrature, derivative by autodiff).

   Choice of D = 600. Max over all depths L = 1..4, both settings, nngp/ntk and
   both input pairs of max|K_D - K_D'| / max|K_D'| (from --quadrature-study):

       D -> D'       tanh      softplus   sigmoid
       25 -> 50      2.5e-02   2.4e-05    1.6e-05
       50 -> 100     1.5e-03   8.5e-08    2.8e-08
       100 -> 200    2.1e-05   2.5e-11    1.9e-12
       200 -> 300    2.9e-08   1.3e-14    1.0e-14
       300 -> 400    2.1e-10   2.0e-14    1.3e-14
       400 -> 500    4.2e-12   1.7e-14    1.4e-14
       500 -> 600    1.6e-13   2.7e-14    1.3e-14
       600 -> 800    3.1e-14   2.4e-14    1.7e-14

   Only tanh converges slowly (the worst case is setting 0, W_std = 1.4, where
   the pre-activation variance is large); softplus and sigmoid are at round-off
   from D = 200 on. No instability up to D = 800. As an independent check,
   ElementwiseNumerical(erf, D) vs the closed-form stax.Erf() (depth 3,
   setting 0, max abs diff over nngp/ntk, 11/12) differs by 8e-2 (D=25),
   1.5e-3 (50), 1.3e-6 (100), 1.1e-11 (200), 1e-13..2e-13 (300..800). So at
   D = 600 the stored tanh/softplus/sigmoid kernels are accurate to ~1e-13
   relative; D = 100 would have left errors ~1e-3 for tanh.

B. Finite-width network ``stax.serial(Dense(16), Relu(), Dense(16), Relu(),
   Dense(3))``, all Dense with W_std=1.4, b_std=0.1, parameterization='ntk',
   init_fn(jax.random.PRNGKey(1), (-1, 5)).
empirical/params/{i}/W              (fan_in, fan_out) raw N(0,1) weights of the i-th
                                    Dense layer, i = 0, 1, 2: (5,16), (16,16), (16,3).
empirical/params/{i}/b              (fan_out,) raw N(0,1) biases. NT stores them with
                                    shape (1, fan_out); flattened here.
empirical/f_x1 (6, 3)               apply_fn(params, x1) (the script checks that the
                                    formula above reproduces it from the stored params).
empirical/ntk_full_11 (6, 6, 3, 3)  empirical_ntk_fn(apply_fn, trace_axes=(), vmap_axes=0,
                                    implementation=NtkImplementation.JACOBIAN_CONTRACTION)
                                    on (x1, None); [n1, n2, k1, k2] = <df_k1(x_n1)/dtheta,
                                    df_k2(x_n2)/dtheta>. NT's layout as returned.
empirical/ntk_full_12 (6, 4, 3, 3)  same on (x1, x2).
empirical/ntk_traced_11 (6, 6)      same with trace_axes=(-1,) on (x1, None).
empirical/ntk_traced_12 (6, 4)      same with trace_axes=(-1,) on (x1, x2).
   NT's traced kernel is the MEAN (not the sum) over the diagonal output blocks:
   ntk_traced = einsum('abkk->ab', ntk_full) / 3 (NT divides the trace by the
   size of the traced axes; checked numerically below, error ~1e-16).

C. Gradient-flow (continuous-time gradient descent on MSE) prediction,
   ``nt.predict.gradient_descent_mse(k_train_train, y_train, learning_rate=0.7,
   diag_reg=0.)``, called as ``fn(t, fx_train_0, fx_test_0, k_test_train)``.
gd_mse/x_train (8, 5), gd_mse/x_test (3, 5), gd_mse/y_train (8, 2),
gd_mse/fx_train_0 (8, 2), gd_mse/fx_test_0 (3, 2)
                                    rng = np.random.default_rng(1); drawn in this order:
                                    x_train, x_test, y_train standard normal, then
                                    fx_train_0, fx_test_0 = 0.1 * standard normal.
gd_mse/k_train_train (8, 8)         analytic NTK of the part-A relu, L=2, setting 0
gd_mse/k_test_train (3, 8)          network on (x_train, x_train) and (x_test, x_train).
gd_mse/learning_rate ()             0.7.
gd_mse/t (5,)                       [0, 0.5, 3, 10, 50] (continuous time, in NT's units).
gd_mse/fx_train_t (5, 8, 2)         predicted train outputs at each t.
gd_mse/fx_test_t (5, 3, 2)          predicted test outputs at each t.
gd_mse/expm_check_err ()            max abs difference between NT's predictions and
                                    the scipy.linalg.expm closed form below (~1e-15).
   NT's loss normalisation: its dynamics are
       d f_train/dt = -(lr / y_train.size) * K (f_train - y_train),
       d f_test/dt  = -(lr / y_train.size) * K_test_train (f_train - y_train),
   i.e. the loss is 0.5/y_train.size * ||f - y||^2 = 0.5/(N*K) * ||f - y||^2
   (N*K = 16 here, not N = 8), with kernel applied per output column. Closed form:
       f_train(t) = y + expm(-lr t K / n)(f_train_0 - y)
       f_test(t)  = f_test_0 - K_test_train K^{-1} (I - expm(-lr t K / n))(f_train_0 - y)
   with n = y_train.size. The script checks this against scipy.linalg.expm and
   also prints the (large) error of the alternative n = N = 8.
"""

import argparse
import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg

jax.config.update("jax_enable_x64", True)

import neural_tangents as nt  # noqa: E402
from neural_tangents import stax  # noqa: E402

QUADRATURE_DEG = 600
SETTINGS = np.array([[1.4, 0.1], [1.0, 0.0]])
DEPTHS = (1, 2, 3, 4)
NUMERICAL = {
    "tanh": jnp.tanh,
    "softplus": jax.nn.softplus,
    "sigmoid": jax.nn.sigmoid,
}


def activation(name, deg=QUADRATURE_DEG):
    closed = {
        "relu": stax.Relu,
        "leaky_relu": lambda: stax.LeakyRelu(0.1),
        "abs": stax.Abs,
        "erf": lambda: stax.Erf(a=1.0, b=1.0, c=0.0),
        "identity": stax.Identity,
        "gelu": lambda: stax.Gelu(approximate=False),
    }
    if name in closed:
        return closed[name]()
    with warnings.catch_warnings():
        # NT warns that accuracy depends on deg and that it uses autodiff for
        # the derivative; both are the intended behaviour here.
        warnings.simplefilter("ignore")
        return stax.ElementwiseNumerical(NUMERICAL[name], deg=deg)


def fc_network(act_layer, depth, w_std, b_std, width=512, out=1):
    def dense(n):
        return stax.Dense(n, W_std=w_std, b_std=b_std, parameterization="ntk")

    return stax.serial(*([dense(width), act_layer] * depth), dense(out))


def analytic_kernels(kernel_fn, x1, x2):
    k12 = kernel_fn(x1, x2, ("nngp", "ntk"))
    k11 = kernel_fn(x1, None, ("nngp", "ntk"))
    return {
        "nngp_12": k12.nngp, "ntk_12": k12.ntk,
        "nngp_11": k11.nngp, "ntk_11": k11.ntk,
    }


def part_a(out, x1, x2):
    names = ["relu", "leaky_relu", "abs", "erf", "identity", "gelu",
             "tanh", "softplus", "sigmoid"]
    for name in names:
        for depth in DEPTHS:
            for s, (w_std, b_std) in enumerate(SETTINGS):
                _, _, kernel_fn = fc_network(activation(name), depth, w_std, b_std)
                for key, val in analytic_kernels(kernel_fn, x1, x2).items():
                    out[f"analytic/{name}/d{depth}/s{s}/{key}"] = val
    out["analytic/settings"] = SETTINGS

    # b_std = 0.0 vs b_std = None (no bias at all): must agree.
    for name in ["relu", "erf"]:
        a = analytic_kernels(fc_network(activation(name), 3, 1.0, 0.0)[2], x1, x2)
        b = analytic_kernels(fc_network(activation(name), 3, 1.0, None)[2], x1, x2)
        err = max(float(np.max(np.abs(np.asarray(a[k]) - np.asarray(b[k])))) for k in a)
        print(f"[A] {name}: b_std=0.0 vs b_std=None max abs diff = {err:.1e}")
        assert err < 1e-14


def quadrature_study(x1, x2, degs=(25, 50, 100, 200, 300, 400, 500, 600, 800)):
    """Print max relative change of the numerical-activation kernels vs deg."""
    from jax.scipy.special import erf

    for name in NUMERICAL:
        res = {}
        for deg in degs:
            vals = []
            for depth in DEPTHS:
                for w_std, b_std in SETTINGS:
                    kfn = fc_network(activation(name, deg), depth, w_std, b_std)[2]
                    vals += [np.asarray(v) for v in analytic_kernels(kfn, x1, x2).values()]
            res[deg] = vals
        for d0, d1 in zip(degs[:-1], degs[1:], strict=True):
            change = max(np.max(np.abs(a - b)) / np.max(np.abs(b))
                         for a, b in zip(res[d0], res[d1], strict=True))
            print(f"[quad] {name:8s} deg {d0:4d} -> {d1:4d}: max rel change {change:.1e}")
    exact = analytic_kernels(fc_network(stax.Erf(), 3, 1.4, 0.1)[2], x1, x2)
    for deg in degs:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            act = stax.ElementwiseNumerical(erf, deg=deg)
        num = analytic_kernels(fc_network(act, 3, 1.4, 0.1)[2], x1, x2)
        err = max(float(np.max(np.abs(np.asarray(num[k]) - np.asarray(exact[k]))))
                  for k in num)
        print(f"[quad] numerical erf deg {deg:4d} vs closed form: max abs diff {err:.1e}")


def part_b(out, x1, x2):
    def dense(n):
        return stax.Dense(n, W_std=1.4, b_std=0.1, parameterization="ntk")

    init_fn, apply_fn, _ = stax.serial(dense(16), stax.Relu(), dense(16),
                                       stax.Relu(), dense(3))
    _, params = init_fn(jax.random.PRNGKey(1), (-1, 5))
    dense_params = [p for p in params if len(p) == 2]
    assert len(dense_params) == 3
    for i, (w, b) in enumerate(dense_params):
        out[f"empirical/params/{i}/W"] = w
        out[f"empirical/params/{i}/b"] = np.asarray(b).reshape(-1)
    f_x1 = apply_fn(params, x1)
    out["empirical/f_x1"] = f_x1

    # Re-derive the forward pass from the stored raw parameters.
    h = np.asarray(x1)
    for i in range(3):
        w = np.asarray(out[f"empirical/params/{i}/W"])
        b = np.asarray(out[f"empirical/params/{i}/b"])
        h = 1.4 / np.sqrt(w.shape[0]) * h @ w + 0.1 * b
        if i < 2:
            h = np.maximum(h, 0.0)
    err = float(np.max(np.abs(h - np.asarray(f_x1))))
    print(f"[B] forward pass from stored params vs apply_fn: max abs diff {err:.1e}")
    assert err < 1e-12

    impl = nt.NtkImplementation.JACOBIAN_CONTRACTION
    assert int(impl) == 1
    full_fn = nt.empirical_ntk_fn(apply_fn, trace_axes=(), vmap_axes=0,
                                  implementation=impl)
    traced_fn = nt.empirical_ntk_fn(apply_fn, trace_axes=(-1,), vmap_axes=0,
                                    implementation=impl)
    out["empirical/ntk_full_11"] = full_fn(x1, None, params)
    out["empirical/ntk_full_12"] = full_fn(x1, x2, params)
    out["empirical/ntk_traced_11"] = traced_fn(x1, None, params)
    out["empirical/ntk_traced_12"] = traced_fn(x1, x2, params)

    for pair in ("11", "12"):
        full = np.asarray(out[f"empirical/ntk_full_{pair}"])
        traced = np.asarray(out[f"empirical/ntk_traced_{pair}"])
        block_sum = np.einsum("abkk->ab", full)
        err_mean = np.max(np.abs(traced - block_sum / full.shape[-1]))
        err_sum = np.max(np.abs(traced - block_sum))
        print(f"[B] ntk_traced_{pair}: |traced - mean of diag blocks| = {err_mean:.1e}, "
              f"|traced - sum| = {err_sum:.1e}  (full shape {full.shape})")
        assert err_mean < 1e-12 < err_sum


def part_c(out):
    rng = np.random.default_rng(1)
    x_train = rng.standard_normal((8, 5))
    x_test = rng.standard_normal((3, 5))
    y_train = rng.standard_normal((8, 2))
    fx_train_0 = 0.1 * rng.standard_normal((8, 2))
    fx_test_0 = 0.1 * rng.standard_normal((3, 2))

    w_std, b_std = SETTINGS[0]
    kernel_fn = fc_network(stax.Relu(), 2, w_std, b_std)[2]
    k_train_train = np.asarray(kernel_fn(x_train, None, "ntk"))
    k_test_train = np.asarray(kernel_fn(x_test, x_train, "ntk"))

    lr = 0.7
    t = np.array([0.0, 0.5, 3.0, 10.0, 50.0])
    predict_fn = nt.predict.gradient_descent_mse(k_train_train, y_train,
                                                 learning_rate=lr, diag_reg=0.0)
    fx_train_t, fx_test_t = predict_fn(t, fx_train_0, fx_test_0, k_test_train)
    fx_train_t, fx_test_t = np.asarray(fx_train_t), np.asarray(fx_test_t)

    def closed_form(n):
        tr, te = [], []
        for ti in t:
            decay = scipy.linalg.expm(-lr * ti * k_train_train / n)
            tr.append(y_train + decay @ (fx_train_0 - y_train))
            grown = np.linalg.solve(k_train_train,
                                    (np.eye(8) - decay) @ (fx_train_0 - y_train))
            te.append(fx_test_0 - k_test_train @ grown)
        return max(np.max(np.abs(np.array(tr) - fx_train_t)),
                   np.max(np.abs(np.array(te) - fx_test_t)))

    err = closed_form(y_train.size)
    err_alt = closed_form(y_train.shape[0])
    print(f"[C] cond(k_train_train) = {np.linalg.cond(k_train_train):.1e}")
    print(f"[C] expm check, d f/dt = -(lr/y_train.size) K (f - y): max err {err:.1e}")
    print(f"[C] alternative normalisation lr/N (N = {y_train.shape[0]}): max err {err_alt:.1e}")
    assert err < 1e-10 < err_alt

    out.update({
        "gd_mse/x_train": x_train, "gd_mse/x_test": x_test, "gd_mse/y_train": y_train,
        "gd_mse/fx_train_0": fx_train_0, "gd_mse/fx_test_0": fx_test_0,
        "gd_mse/k_train_train": k_train_train, "gd_mse/k_test_train": k_test_train,
        "gd_mse/learning_rate": np.array(lr), "gd_mse/t": t,
        "gd_mse/fx_train_t": fx_train_t, "gd_mse/fx_test_t": fx_test_t,
        "gd_mse/expm_check_err": np.array(err),
    })


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=None, help="default: nt_golden.npz next to this script")
    parser.add_argument("--quadrature-study", action="store_true")
    args = parser.parse_args()

    path = args.output or os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                       "nt_golden.npz")
    print(f"neural-tangents {nt.__version__}, jax {jax.__version__}")

    rng = np.random.default_rng(0)
    x1 = rng.standard_normal((6, 5))
    x2 = rng.standard_normal((4, 5))
    if args.quadrature_study:
        quadrature_study(x1, x2)

    out = {"inputs/x1": x1, "inputs/x2": x2}
    part_a(out, x1, x2)
    part_b(out, x1, x2)
    part_c(out)

    arrays = {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}
    for k, v in arrays.items():
        assert np.all(np.isfinite(v)), k
    arrays["meta/nt_version"] = np.array(nt.__version__)
    arrays["meta/jax_version"] = np.array(jax.__version__)
    arrays["meta/quadrature_deg"] = np.array(str(QUADRATURE_DEG))
    np.savez_compressed(path, **arrays)
    print(f"wrote {len(arrays)} arrays to {path} ({os.path.getsize(path) / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
