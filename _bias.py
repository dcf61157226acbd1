import numpy as np, time, sys
sys.path.insert(0, "tests")
from conftest import make_linearised_net
from ntkdyn import graphs
from ntkdyn.predict import predict_from_kernels
net = make_linearised_net(n=22, n_test=8, seed=4)
RING = graphs.mixing(graphs.topology("ring", 4))
kw = dict(f0_train=net.f0, record_outputs=True)
steps = range(0, 21, 4)
full = predict_from_kernels(net.kernel_full, net.y, net.agent, RING, 0.3, steps, "atc", **kw)
for mode in ("epoch", "independent"):
    for S in (16, 256, 2048):
        t=time.time()
        p = predict_from_kernels(net.kernel_full, net.y, net.agent, RING, 0.3, steps, "atc", batch_size=2, samples=S, seed=0, batch_sampling=mode, **kw)
        d = (p.train_outputs - full.train_outputs)[1:]
        sd = p.per_sample["train_outputs"].std(axis=0)[1:]
        print(mode, S, "rms err", np.sqrt(np.mean(d**2)), "MC se", np.sqrt(np.mean(sd**2))/np.sqrt(S), "max |d|/se", np.max(np.abs(d)/(sd/np.sqrt(S)+1e-300)), f"{time.time()-t:.1f}s")
