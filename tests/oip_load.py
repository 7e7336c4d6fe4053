"""Bounded load run of `uminfer serve --grpc` with Triton's own clients
(tritonclient[grpc], and tritonclient[http] for the REST form) from several
processes at once, every answer checked.

    python tests/oip_load.py URL MODELS_DIR REQUESTS_PER_PROCESS [PROCESSES_PER_KIND [HTTP_URL]]

The server must serve `tiny`, `identity` and `encoder`. Four kinds of client process,
PROCESSES_PER_KIND of each (default 1): unary and streaming, each with the
tensors in the messages (raw) or in system shared memory regions; with
HTTP_URL (the server's --http address) two more: REST calls with binary
tensor data (raw) or shared memory. Requests
rotate between `identity` (a fresh random input: the answer must be that
input), `tiny` (models/tiny.input.npy: the answer must equal
models/tiny.expected.npy) and `encoder` (two INT64 inputs, two outputs:
models/encoder.inputs.npz, both answers equal to models/encoder.expected.npz).
A stream keeps WINDOW requests in flight, matched to their answers by request
id; shared memory streams use one region pair per request in flight (the
encoder's two inputs, and its two outputs, side by side in them). Prints a report (throughput, P50/P90/P99,
errors, and each model's mean batch from the server's statistics: above 1 against `--max-batch`) and
exits non-zero when any request failed or any answer was wrong.
"""
import multiprocessing as mp
import os
import sys
import threading
import time

import numpy as np

WINDOW = 4
KINDS = [("unary", "raw"), ("unary", "shm"), ("stream", "raw"), ("stream", "shm")]
HTTP_KINDS = [("http", "raw"), ("http", "shm")]


def worker(url, models_dir, n, api, transport, tag, out):
    """Runs one client process's requests; puts (kind, n, errors, latencies, seconds) on `out`."""
    try:
        out.put(run(url, models_dir, n, api, transport, tag))
    except Exception as e:  # a process that fails still reports, as errors
        out.put((f"{api}-{transport}", n, [f"client process failed: {e!r}"], [], 0.0))


def run(url, models_dir, n, api, transport, tag):
    """`url` is the gRPC address, or the REST one for api "http"."""
    import tritonclient.grpc
    import tritonclient.http
    import tritonclient.utils.shared_memory as shm

    tg = tritonclient.http if api == "http" else tritonclient.grpc

    x = np.load(os.path.join(models_dir, "tiny.input.npy"))
    expected = np.load(os.path.join(models_dir, "tiny.expected.npy"))
    enc_in = dict(np.load(os.path.join(models_dir, "encoder.inputs.npz")))
    enc_out = dict(np.load(os.path.join(models_dir, "encoder.expected.npz")))
    rng = np.random.default_rng(abs(hash(tag)) % (1 << 32))
    c = tg.InferenceServerClient(url)
    slots = []  # shared memory: (input region, output region) per request in flight
    errors, latencies = [], []
    window = WINDOW if api == "stream" else 1
    if transport == "shm":
        for s in range(window):
            names = (f"{tag}-in{s}", f"{tag}-out{s}")
            handles = (shm.create_shared_memory_region(names[0], f"/{names[0]}", x.nbytes),
                       shm.create_shared_memory_region(names[1], f"/{names[1]}", x.nbytes))
            c.register_system_shared_memory(names[0], f"/{names[0]}", x.nbytes)
            c.register_system_shared_memory(names[1], f"/{names[1]}", x.nbytes)
            slots.append((names, handles))

    def request(i, slot):
        """The model, wanted answers (by output name), inputs and outputs of request i."""
        if i % 3 == 2:
            model, feeds, want = "encoder", enc_in, enc_out
        elif i % 3 == 0:
            xi = rng.standard_normal(x.shape, dtype=np.float32)
            model, feeds, want = "identity", {"x": xi}, {"output__0": xi}
        else:
            model, feeds, want = "tiny", {"x": x}, {"output__0": expected}
        inputs, outputs = [], []
        if transport == "shm":
            (n_in, n_out), (h_in, _) = slots[slot]
            shm.set_shared_memory_region(h_in, list(feeds.values()))
            offset = 0
            for name, a in feeds.items():
                inp = tg.InferInput(name, list(a.shape), tg.np_to_triton_dtype(a.dtype))
                inp.set_shared_memory(n_in, a.nbytes, offset)
                inputs.append(inp)
                offset += a.nbytes
            offset = 0
            for name, a in want.items():
                outp = tg.InferRequestedOutput(name)
                outp.set_shared_memory(n_out, a.nbytes, offset)
                outputs.append(outp)
                offset += a.nbytes
        else:
            for name, a in feeds.items():
                inp = tg.InferInput(name, list(a.shape), tg.np_to_triton_dtype(a.dtype))
                inp.set_data_from_numpy(a)
                inputs.append(inp)
            outputs = [tg.InferRequestedOutput(name) for name in want]
        return model, want, inputs, outputs

    def answer(result, want, slot):
        """The answers by output name: from the response, or read where they lie in the output region."""
        if transport == "shm":
            got, offset = {}, 0
            for name, a in want.items():
                got[name] = shm.get_contents_as_numpy(slots[slot][1][1], a.dtype, list(a.shape), offset=offset)
                offset += a.nbytes
            return got
        return {name: result.as_numpy(name) for name in want}

    def verify(i, got, want):
        for name, w in want.items():
            g = got.get(name)
            if g is None or g.shape != w.shape or float(np.abs(g - w).max()) > 1e-5 * max(1.0, float(np.abs(w).max())):
                errors.append(f"request {i}: wrong answer for {name}")

    start = time.perf_counter()
    if api in ("unary", "http"):
        for i in range(n):
            model, want, inputs, outputs = request(i, 0)
            t = time.perf_counter()
            try:
                r = c.infer(model, inputs, outputs=outputs, request_id=str(i))
            except Exception as e:  # every failure is counted and reported
                errors.append(f"request {i}: {e}")
                continue
            latencies.append(time.perf_counter() - t)
            verify(i, answer(r, want, 0), want)
    else:
        free = threading.Semaphore(window)
        lock, pending, done = threading.Lock(), {}, threading.Event()
        answered = [0]

        def callback(result, error):
            now = time.perf_counter()
            with lock:
                if error is not None:  # no id comes with it: free the oldest request's slot
                    errors.append(f"stream: {error}")
                    if pending:
                        pending.pop(min(pending, key=lambda k: pending[k][0]))
                else:
                    i, slot, want, t = pending.pop(result.get_response().id)
                    latencies.append(now - t)
                    verify(i, answer(result, want, slot), want)
                answered[0] += 1
                if answered[0] == n:
                    done.set()
            free.release()

        c.start_stream(callback)
        for i in range(n):
            free.acquire()
            with lock:  # only this thread adds to `pending`: the slot stays free
                used = {s for (_, s, _, _) in pending.values()}
            slot = next(s for s in range(window) if s not in used)
            model, want, inputs, outputs = request(i, slot)
            with lock:
                pending[str(i)] = (i, slot, want, time.perf_counter())
            c.async_stream_infer(model, inputs, outputs=outputs, request_id=str(i))
        if not done.wait(300):
            errors.append(f"stream: only {answered[0]} of {n} answers")
        c.stop_stream()
    elapsed = time.perf_counter() - start
    for (names, handles) in slots:
        for name, h in zip(names, handles):
            c.unregister_system_shared_memory(name)
            shm.destroy_shared_memory_region(h)
    return (f"{api}-{transport}", n, errors, latencies, elapsed)


def main():
    url, models_dir, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    per_kind = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    http = sys.argv[5] if len(sys.argv) > 5 else None
    kinds = [(api, t, url) for api, t in KINDS] + ([(api, t, http) for api, t in HTTP_KINDS] if http else [])
    ctx = mp.get_context("spawn")  # gRPC must not be forked
    out = ctx.Queue()
    procs = [ctx.Process(target=worker, args=(at, models_dir, n, api, transport, f"uminfer-load-{os.getpid()}-{api}-{transport}-{k}", out))
             for api, transport, at in kinds for k in range(per_kind)]
    start = time.perf_counter()
    for p in procs:
        p.start()
    results = [out.get(timeout=600) for _ in procs]
    wall = time.perf_counter() - start
    for p in procs:
        p.join()
    print(f"load run: {len(procs)} client processes ({per_kind} per kind), {n} requests each, "
          f"rotating identity (random input), tiny and encoder; stream window {WINDOW}")
    print(f"{'kind':<14} {'requests':>8} {'errors':>6} {'req/s':>8} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8}")
    total_err, all_lat = 0, []
    for kind in [f"{a}-{t}" for a, t, _ in kinds]:
        rows = [r for r in results if r[0] == kind]
        reqs = sum(r[1] for r in rows)
        errs = [e for r in rows for e in r[2]]
        lat = np.array([v for r in rows for v in r[3]])
        rate = reqs / max(max(r[4] for r in rows), 1e-9)
        total_err += len(errs)
        all_lat.extend(lat.tolist())
        p50, p90, p99 = (np.percentile(lat, q) * 1e3 for q in (50, 90, 99)) if len(lat) else (float("nan"),) * 3
        print(f"{kind:<14} {reqs:>8} {len(errs):>6} {rate:>8.1f} {p50:>8.2f} {p90:>8.2f} {p99:>8.2f}")
        for e in errs[:5]:
            print(f"  {kind}: {e}")
    total = sum(r[1] for r in results)
    lat = np.array(all_lat) if all_lat else np.array([float("nan")])
    busy = max(max(r[4] for r in results), 1e-9)
    q = [np.percentile(lat, p) * 1e3 for p in (50, 90, 99)]
    print(f"{'all':<14} {total:>8} {total_err:>6} {total / busy:>8.1f} {q[0]:>8.2f} {q[1]:>8.2f} {q[2]:>8.2f}")
    # The server's own counts: samples run (inferences) over forward passes
    # (executions) is the mean batch; 1 without --max-batch.
    import tritonclient.grpc
    stats = tritonclient.grpc.InferenceServerClient(url).get_inference_statistics("", as_json=True)["model_stats"]
    for m in stats:
        inferences, executions = int(m.get("inference_count", 0)), int(m.get("execution_count", 0))
        if executions:
            print(f"mean batch {m['name']}: {inferences / executions:.2f} ({inferences} samples in {executions} forward passes)")
    print(f"req/s: requests over the longest request phase of the row's processes (all processes run at once); "
          f"wall time with process start-up {wall:.1f} s")
    print(f"errors={total_err}")
    sys.exit(1 if total_err else 0)


if __name__ == "__main__":
    main()
