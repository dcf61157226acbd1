"""Why the finite-width band is not centred on the infinite-width value (issue 14).

Digits 200 / 100 test, ring of 4, DGD, depth-2 ReLU MLP, lr 0.3, 200 steps, f0 random
(64 common draws for every kernel).  For widths 256 and 1024 and 8 networks each: traces
of the empirical NNGP / NTK against the analytic ones, the Schur complement
S(K) = tr(K_** - K_*X K_XX^+ K_X*) (initial test variance not explained by the training
outputs), the numerical rank, and the expected final test loss with both kernels
empirical, with only one of them empirical, and the mean network.  Results:
theory/finite_width.md section 6.  Usage: python validate/width_band_centre.py [networks]
"""

import dataclasses
import sys
import time

import numpy as np

import ntkdyn as nd
from ntkdyn import finite_width as fw
from ntkdyn.dynamics import random_init
from ntkdyn.dynamics.problem import make_problem
from ntkdyn.dynamics.run import run_problem
from ntkdyn.kernels.analytic import analytic_kernels
from ntkdyn.kernels.empirical import mlp_empirical_ntk

P = 64  # sampled f0 per kernel (common random numbers)


def main(networks: int = 8) -> None:
    t0 = time.time()
    data = nd.data.digits(n_train=200, n_test=100, seed=0)
    parts = nd.data.partition(data, agents=4, scheme="iid", seed=0).sorted()
    data = parts.dataset
    w = nd.graphs.mixing(nd.graphs.topology("ring", 4))
    arch = nd.models.MLP(hidden=(512, 512), out=10)
    n = data.num_train
    pool = np.concatenate([data.x_train, data.x_test])
    ka, ta = analytic_kernels(pool, hidden_layers=2, activation="relu", W_std=arch.W_std,
                              b_std=arch.b_std)

    def schur(k):
        kxx, kxt, ktt = k[:n, :n], k[:n, n:], k[n:, n:]
        return float(np.trace(ktt - kxt.T @ np.linalg.pinv(kxx, rcond=1e-10, hermitian=True)
                              @ kxt))

    def final(t, k):
        prob = make_problem(t[:n, :n], data.y_train, parts.agent, w,
                            kernel_test_train=t[n:, :n], y_test=data.y_test)
        init = dataclasses.replace(random_init.draw(k, n, P, 0), nngp=None)
        tr = run_problem(prob, "dgd", [0.3], [0, 200], reference=False, init=init, seed=0)[0]
        return float(tr.test_loss[-1].mean()), float(tr.mean_network.test_loss[-1].mean())

    ev = np.linalg.eigvalsh(ka)[::-1]
    ref = final(ta, ka)
    print(f"analytic: tr K {np.trace(ka):.2f}, S(K) {schur(ka):.2f}, lambda_min {ev[-1]:.3g}; "
          f"expected test loss {ref[0]:.4f}, mean network {ref[1]:.4f}", flush=True)
    for width in (256, 1024):
        net = fw.width_arch(arch, width)
        rows = []
        for params in fw.network_params(net, data.dim, range(networks)):
            k = fw.empirical_nngp(net, params, pool)
            t = mlp_empirical_ntk(net, params, pool)
            e = np.linalg.eigvalsh(k)[::-1]
            both = final(t, k)
            rows.append([np.trace(k) / np.trace(ka), np.trace(t) / np.trace(ta),
                         schur(k) / schur(ka), (e > 1e-10 * e[0]).sum(), both[0],
                         final(ta, k)[0], final(t, ka)[0], both[1]])
        r = np.array(rows, dtype=float)
        print(f"width {width} ({networks} networks): tr K_s/tr K {r[:, 0].mean():.4f} "
              f"+- {r[:, 0].std():.4f}; tr Theta_s/tr Theta {r[:, 1].mean():.4f}; "
              f"S(K_s)/S(K) {r[:, 2].mean():.4f} +- {r[:, 2].std():.4f}; rank "
              f"{r[:, 3].min():.0f}-{r[:, 3].max():.0f} of {len(pool)}", flush=True)
        print(f"  expected final test loss: both empirical {r[:, 4].mean():.4f} "
              f"[{r[:, 4].min():.3f}, {r[:, 4].max():.3f}]; analytic Theta + K_s "
              f"{r[:, 5].mean():.4f}; Theta_s + analytic K {r[:, 6].mean():.4f}; mean "
              f"network under Theta_s {r[:, 7].mean():.4f}", flush=True)
    print(f"total {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 8)
