"""uminfer bench peer: PyTorch's own ways of running the same model, driven
one request at a time by `uminfer bench` so that schemes are interleaved.

Protocol (lines on stdin/stdout):
  -> ready <intra-op threads> <device>
  <- check IN.npy OUT.npy     -> ok            (one forward on IN, output written to OUT)
  <- run SEED                 -> t <ns>        (fresh input from SEED, untimed; then one timed request)
  <- quit
Modes: torchscript (torch.jit.load, CPU or the given device, eager forward, copy out to NumPy)
       cuda-graph  (static input/output buffers, torch.cuda.CUDAGraph captured after warm-up,
                    per request: copy pinned host input in, replay, copy out, synchronise)
"""
import argparse
import sys
import time

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--mode", choices=["torchscript", "cuda-graph"], required=True)
    ap.add_argument("--shape", required=True)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--warmup", type=int, default=20)
    a = ap.parse_args()
    shape = tuple(int(d) for d in a.shape.split(","))
    dev = torch.device(a.device)
    model = torch.jit.load(a.model, map_location=dev).eval()
    host_in = torch.zeros(shape, dtype=torch.float32)
    rng = np.random.default_rng(0)
    graph = None
    with torch.inference_mode():
        if a.mode == "cuda-graph":
            host_in = host_in.pin_memory()
            static_in = torch.zeros(shape, dtype=torch.float32, device=dev)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(max(3, a.warmup)):
                    static_out = model(static_in)
            torch.cuda.current_stream().wait_stream(side)
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = model(static_in)
            host_out = torch.zeros(static_out.shape, dtype=static_out.dtype).pin_memory()
        else:
            for _ in range(a.warmup):
                model(host_in.to(dev))

        def request(x: torch.Tensor) -> np.ndarray:
            if graph is not None:
                static_in.copy_(x, non_blocking=True)
                graph.replay()
                host_out.copy_(static_out, non_blocking=True)
                torch.cuda.synchronize()
                return host_out.numpy()
            y = model(x.to(dev))
            return y.to("cpu").numpy()

        print(f"ready {torch.get_num_threads()} {dev}", flush=True)
        for line in sys.stdin:
            cmd = line.split()
            if not cmd:
                continue
            if cmd[0] == "quit":
                break
            if cmd[0] == "check":
                x = torch.from_numpy(np.load(cmd[1]).astype(np.float32))
                host_in.copy_(x)
                np.save(cmd[2], request(host_in).copy())
                print("ok", flush=True)
            elif cmd[0] == "run":
                rng = np.random.default_rng(int(cmd[1]))
                host_in.copy_(torch.from_numpy(rng.random(shape, dtype=np.float32)))
                t0 = time.perf_counter_ns()
                out = request(host_in)
                out = out.copy()
                t1 = time.perf_counter_ns()
                print(f"t {t1 - t0}", flush=True)


if __name__ == "__main__":
    main()
