"""Where the resident set peaks in one default prediction (one random network, analytic
kernel): the growth of VmRSS over time, sampled every 2 ms by a thread that also takes the
main thread's stack, printed at each change of the innermost frames, then the estimate
(:func:`ntkdyn.prediction.prediction_estimate`) against the measured peak growth.

    python benchmarks/memory_timeline.py 4500 [random|mean]

The probe of ``tests/test_memory.py`` (synthetic data, d = 16, K = 10, 200 test samples,
4 agents on a ring, width 64, three records).  Linux only (reads /proc/self/status).
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
import traceback


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(key + r":\s+(\d+)", f.read()).group(1)) * 1024


def main(n: int, mode: str = "random") -> dict:
    import ntkdyn as nd
    from ntkdyn import prediction as pipeline

    m, q, k, d = 200, 4, 10, 16
    data = nd.data.synthetic(n_train=n, n_test=m, dim=d, classes=k, seed=0)
    parts = nd.data.partition(data, q, "iid", seed=0)
    w = nd.graphs.mixing(nd.graphs.topology("ring", q))
    arch = nd.models.MLP(hidden=(64, 64), out=k)
    est = pipeline.prediction_estimate(arch, n, m, d, k, q, kernel="analytic",
                                       f0_random=mode == "random")
    with open("/proc/self/clear_refs", "w") as f:  # VmHWM := VmRSS
        f.write("5")
    base = _status("VmRSS")
    main_id = threading.main_thread().ident
    peaks: list[tuple[int, str]] = []
    done = threading.Event()

    def sample():
        best = 0
        while not done.is_set():
            grown = _status("VmRSS") - base
            if grown > best + 5_000_000:
                best = grown
                frame = sys._current_frames().get(main_id)
                stack = traceback.extract_stack(frame)[-4:] if frame else []
                peaks.append((grown, " < ".join(f"{s.name}:{s.lineno}"
                                                for s in reversed(stack))))
            time.sleep(0.002)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    nd.predict(arch, parts, w, lr=0.05, steps=range(0, 21, 10), kernel="analytic",
               **({} if mode == "random" else {"f0": "mean"}))
    done.set()
    thread.join()
    peak = _status("VmHWM") - base
    for i, (grown, where) in enumerate(peaks):
        if i + 1 == len(peaks) or peaks[i + 1][1] != where:
            print(f"{grown / 1e9:7.3f} GB  {where}")
    out = {"n": n, "mode": mode, "estimate": est, "peak": peak, "ratio": est / peak}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000,
         sys.argv[2] if len(sys.argv) > 2 else "random")
