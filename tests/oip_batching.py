"""Dynamic batching through `uminfer serve --grpc --max-batch`, driven by
Triton's own clients, as tests/oip_python.rs runs them.

Usage:
  oip_batching.py load GRPC_URL HTTP_URL MODELS_DIR
      the server serves tiny and encoder with --max-batch 8 and a queue delay:
      metadata shows the batch as -1, the config max_batch_size 8, the shapes
      without the batch, dynamic_batching with the delay and the buckets;
      8 threads x 12 requests of 1 to 3 samples with distinct random inputs
      (gRPC and REST), each answer equal to PyTorch's for those samples;
      statistics count samples as inferences and batches as executions, and
      batches of several samples formed; a request over max_batch and one
      whose tensors disagree on the batch are refused with INVALID_ARGUMENT.
  oip_batching.py refusals GRPC_URL HTTP_URL
      the server serves tiny with --max-batch 8 --max-queue 1, a long queue
      delay and a shorter queue timeout: a request behind a waiting one is
      refused at once (RESOURCE_EXHAUSTED, REST 429), the waiting one after
      its timeout (UNAVAILABLE, REST 503), a full batch runs at once, and a
      request's own shorter `timeout` parameter applies.

Prints KEY=ok lines; exits 1 with FAILED: ... on the first wrong answer.
"""
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import tritonclient.grpc as grpc
import tritonclient.http as http
from tritonclient.utils import InferenceServerException


def fail(msg):
    print(f"FAILED: {msg}", flush=True)
    sys.exit(1)


def check(ok, msg):
    if not ok:
        fail(msg)


def inputs_for(tc, arrays):
    out = []
    for name, a in arrays.items():
        i = tc.InferInput(name, list(a.shape), tc.np_to_triton_dtype(a.dtype))
        i.set_data_from_numpy(a)
        out.append(i)
    return out


def close(got, want, what):
    check(got.shape == want.shape, f"{what}: shape {got.shape}, expected {want.shape}")
    err = float(np.max(np.abs(got.astype(np.float64) - want)) / max(1e-12, float(np.max(np.abs(want)))))
    check(err <= 1e-4, f"{what}: relative error {err} against PyTorch")


def load(grpc_url, http_url, models):
    g = grpc.InferenceServerClient(grpc_url)
    meta = g.get_model_metadata("tiny", as_json=True)
    check(meta["inputs"][0]["shape"] == ["-1", "3", "128", "128"], f"tiny metadata {meta['inputs']}")
    check(meta["outputs"][0]["shape"] == ["-1", "10"], f"tiny metadata {meta['outputs']}")
    print("metadata=ok", flush=True)
    cfg = g.get_model_config("tiny", as_json=True)["config"]
    check(cfg.get("max_batch_size") == 8, f"max_batch_size {cfg.get('max_batch_size')}")
    check(cfg["input"][0]["dims"] == ["3", "128", "128"], f"config dims {cfg['input']}")
    check(cfg.get("dynamic_batching", {}).get("max_queue_delay_microseconds") == "2000", f"dynamic_batching {cfg.get('dynamic_batching')}")
    check(cfg["parameters"]["bucket_sizes"]["string_value"] == "1,2,4,8", f"parameters {cfg.get('parameters')}")
    check(len(cfg["parameters"]["bucket_bytes"]["string_value"].split(",")) == 4, f"parameters {cfg.get('parameters')}")
    print("config=ok", flush=True)

    tiny = torch.jit.load(f"{models}/tiny.pt").eval()
    encoder = torch.jit.load(f"{models}/encoder.pt").eval()
    vocab = 1000  # the encoder's vocabulary (models/export.py); ids below it

    def one(t, m):
        rng = np.random.default_rng(1000 * t + m)
        n = 1 + (t + m) % 3
        use_http = m % 2 == 1
        tc = http if use_http else grpc
        c = http.InferenceServerClient(http_url) if use_http else grpc.InferenceServerClient(grpc_url)
        if m % 3 == 2:
            ids = rng.integers(0, vocab, size=(n, 32), dtype=np.int64)
            mask = np.ones((n, 32), dtype=np.int64)
            mask[:, 32 - (m % 7):] = 0
            r = c.infer("encoder", inputs_for(tc, {"input_ids": ids, "attention_mask": mask}))
            with torch.no_grad():
                hidden, pooled = encoder(torch.from_numpy(ids), torch.from_numpy(mask))
            close(r.as_numpy("output__0"), hidden.numpy(), f"encoder t{t} m{m}")
            close(r.as_numpy("output__1"), pooled.numpy(), f"encoder t{t} m{m}")
        else:
            x = rng.standard_normal((n, 3, 128, 128), dtype=np.float32)
            r = c.infer("tiny", inputs_for(tc, {"x": x}))
            with torch.no_grad():
                want = tiny(torch.from_numpy(x)).numpy()
            close(r.as_numpy("output__0"), want, f"tiny t{t} m{m}")
        return n

    threads, per = 8, 12
    start = time.monotonic()
    with ThreadPoolExecutor(threads) as pool:
        samples = sum(pool.map(lambda tm: one(*tm), [(t, m) for t in range(threads) for m in range(per)]))
    took = time.monotonic() - start
    stats = {s["name"]: s for s in g.get_inference_statistics("", as_json=True)["model_stats"]}
    inferences = sum(int(s.get("inference_count", 0)) for s in stats.values())
    executions = sum(int(s.get("execution_count", 0)) for s in stats.values())
    sizes = [int(b["batch_size"]) for s in stats.values() for b in s.get("batch_stats", [])]
    check(inferences == samples, f"inference_count {inferences}, {samples} samples sent")
    check(0 < executions < threads * per, f"execution_count {executions} for {threads * per} requests: no batch formed")
    check(max(sizes, default=0) > 1, f"batch_stats sizes {sizes}")
    for s in stats.values():
        for b in s.get("batch_stats", []):
            check(int(b["compute_infer"]["count"]) > 0 and int(b["compute_infer"]["ns"]) > 0, f"batch_stats {b}")
    print(f"load=ok requests={threads * per} samples={samples} executions={executions} mean_batch={samples / executions:.2f} seconds={took:.2f}", flush=True)

    x9 = np.zeros((9, 3, 128, 128), dtype=np.float32)
    try:
        g.infer("tiny", inputs_for(grpc, {"x": x9}))
        fail("9 samples, over max_batch 8, were answered")
    except InferenceServerException as e:
        check(e.status() == "StatusCode.INVALID_ARGUMENT" and "1 to 8" in e.message(), f"over max_batch: {e.status()} {e.message()}")
    ids = np.zeros((2, 32), dtype=np.int64)
    mask = np.ones((3, 32), dtype=np.int64)
    try:
        g.infer("encoder", inputs_for(grpc, {"input_ids": ids, "attention_mask": mask}))
        fail("inputs of 2 and 3 samples were answered")
    except InferenceServerException as e:
        check(e.status() == "StatusCode.INVALID_ARGUMENT" and "attention_mask" in e.message(), f"mixed batch: {e.status()} {e.message()}")
    print("over_max_batch=refused", flush=True)


def refusals(grpc_url, http_url):
    x = np.zeros((1, 3, 128, 128), dtype=np.float32)
    for name, url, tc, full, timeout in [("grpc", grpc_url, grpc, "StatusCode.RESOURCE_EXHAUSTED", "StatusCode.UNAVAILABLE"), ("http", http_url, http, "429", "503")]:
        # A client per thread: tritonclient.http's (gevent) may not be shared between threads.
        c = tc.InferenceServerClient(url)
        first = {}

        def waiting():
            t0 = time.monotonic()
            try:
                tc.InferenceServerClient(url).infer("tiny", inputs_for(tc, {"x": x}))
                first["result"] = "answered"
            except InferenceServerException as e:
                first["result"] = (str(e.status()), e.message(), time.monotonic() - t0)

        t = threading.Thread(target=waiting)
        t.start()
        time.sleep(0.03)  # the first request waits in the queue (delay 500 ms, timeout 150 ms)
        t0 = time.monotonic()
        try:
            c.infer("tiny", inputs_for(tc, {"x": x}))
            fail(f"{name}: a request beyond --max-queue 1 was answered")
        except InferenceServerException as e:
            took = time.monotonic() - t0
            check(str(e.status()) == full and "queue is full" in e.message(), f"{name} queue full: {e.status()} {e.message()}")
            check(took < 0.1, f"{name}: refused after {took:.3f} s, not at once")
        t.join()
        r = first.get("result")
        check(isinstance(r, tuple) and r[0] == timeout and "queue timeout" in r[1] and 0.14 <= r[2] < 0.45, f"{name} queue timeout: {r}")
        x8 = np.zeros((8, 3, 128, 128), dtype=np.float32)
        t0 = time.monotonic()
        out = c.infer("tiny", inputs_for(tc, {"x": x8})).as_numpy("output__0")
        check(out.shape == (8, 10) and time.monotonic() - t0 < 0.14, f"{name}: a full batch waited or failed")
        # The request's own timeout (30 ms, under the server's 150 ms) applies.
        t0 = time.monotonic()
        try:
            c.infer("tiny", inputs_for(tc, {"x": x}), timeout=30000)
            fail(f"{name}: a request past its own 30 ms timeout was answered")
        except InferenceServerException as e:
            took = time.monotonic() - t0
            check(str(e.status()) == timeout and "queue timeout" in e.message() and 0.03 <= took < 0.14, f"{name} own timeout: {e.status()} {e.message()} after {took:.3f} s")
        print(f"{name}_queue_full=refused {name}_queue_timeout=refused {name}_full_batch=ok {name}_own_timeout=refused", flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "load":
        load(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        refusals(sys.argv[2], sys.argv[3])
    print("done=ok", flush=True)
