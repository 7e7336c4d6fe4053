"""ci/gpu-floor.py MODELS_DIR OUT.json — the floor under one GPU request,
measured with PyTorch on the GPU host (docs/notes/performance.md explains its use).

For the 1x3x128x128 float32 input (196 608 bytes) it measures, each as the
median over many repetitions after warm-up:
  - host-to-device copy from pinned memory (CUDA events, and host wall time
    including the synchronisation), device-to-host copy of the output;
  - launch + synchronise of a CUDA graph holding one tiny kernel (the fixed
    cost of any graph replay seen from the host);
  - each model's forward pass replayed from a CUDA graph: device time (events)
    and host wall time (replay + synchronise);
  - the same forward pass run eagerly (device and host time).
"""
import json
import statistics
import sys
import time

import torch

models_dir, out_path = sys.argv[1], sys.argv[2]
dev = torch.device("cuda", 0)
torch.backends.cudnn.benchmark = True
N = 2000


def host_median(fn, n=N):
    for _ in range(50):
        fn()
    ts = []
    for _ in range(n):
        t = time.perf_counter_ns()
        fn()
        ts.append(time.perf_counter_ns() - t)
    return statistics.median(ts) / 1000.0


def event_median(fn, n=N):
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for _ in range(50):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(n):
        s.record()
        fn()
        e.record()
        e.synchronize()
        ts.append(s.elapsed_time(e) * 1000.0)
    return statistics.median(ts)


res = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "unit": "microseconds (median)"}
x_host = torch.randn(1, 3, 128, 128).pin_memory()
x_dev = torch.empty_like(x_host, device=dev)
res["h2d_196KB_device"] = event_median(lambda: x_dev.copy_(x_host, non_blocking=True))
res["h2d_196KB_host"] = host_median(lambda: (x_dev.copy_(x_host, non_blocking=True), torch.cuda.synchronize()))
res["h2d_bandwidth_GBps"] = x_host.numel() * 4 / res["h2d_196KB_device"] / 1000.0
big = torch.empty(256 << 20, dtype=torch.uint8).pin_memory()
big_dev = torch.empty_like(big, device=dev)
res["h2d_256MB_bandwidth_GBps"] = big.numel() / event_median(lambda: big_dev.copy_(big, non_blocking=True), 20) / 1000.0
del big, big_dev
y_dev = torch.randn(1, 1000, device=dev)
y_host = torch.empty(1, 1000).pin_memory()
res["d2h_4KB_host"] = host_median(lambda: (y_host.copy_(y_dev, non_blocking=True), torch.cuda.synchronize()))
res["sync_idle_host"] = host_median(torch.cuda.synchronize)

# One tiny kernel in a graph: the fixed cost of a replay seen from the host.
z = torch.zeros(1, device=dev)
g = torch.cuda.CUDAGraph()
s = torch.cuda.Stream()
s.wait_stream(torch.cuda.current_stream())
with torch.cuda.stream(s):
    for _ in range(3):
        z.add_(1)
    torch.cuda.synchronize()
    with torch.cuda.graph(g, stream=s):
        z.add_(1)
res["graph_1kernel_replay_host"] = host_median(lambda: (g.replay(), torch.cuda.synchronize()))

for name in ("tiny", "resnet18"):
    m = torch.jit.load(f"{models_dir}/{name}.pt", map_location=dev).eval()
    xin = torch.randn(1, 3, 128, 128, device=dev)
    with torch.inference_mode():
        for _ in range(5):
            m(xin)
        torch.cuda.synchronize()
        r = {"eager_device": event_median(lambda: m(xin), 500), "eager_host": host_median(lambda: (m(xin), torch.cuda.synchronize()), 500)}
        g = torch.cuda.CUDAGraph()
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(3):
                m(xin)
            torch.cuda.synchronize()
            with torch.cuda.graph(g, stream=s):
                out = m(xin)
        r["graph_device"] = event_median(g.replay, 1000)
        r["graph_host"] = host_median(lambda: (g.replay(), torch.cuda.synchronize()), 1000)
        r["graph_with_copies_host"] = host_median(
            lambda: (xin.copy_(x_host, non_blocking=True), g.replay(), y_host[:, : out.shape[1]].copy_(out, non_blocking=True), torch.cuda.synchronize()), 1000)
        r["kernels_in_graph"] = None
        try:
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                m(xin)
                torch.cuda.synchronize()
            r["kernels_in_graph"] = sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)
        except Exception as e:  # the count is informative only
            r["kernels_in_graph"] = f"profiler failed: {e}"
    res[name] = r

json.dump(res, open(out_path, "w"), indent=2)
print(json.dumps(res, indent=2))
