"""Soak run of `uminfer serve --grpc --http`: many client processes for many
minutes, every answer checked, the server's memory and descriptors compared
between the start and the end. Not part of CI: run it by hand.

    .venv/bin/python tests/soak.py --minutes 10 --clients 16 [--bin PATH]

The script starts the server itself (`--bin`, default
`$CARGO_TARGET_DIR/release/uminfer`, else `target/release/uminfer`) on
loopback ports chosen by the system, serving `tiny`, `identity` and
`encoder` from models/. Each of the K client processes (multiprocessing)
mixes, at random until the time is up:

- good requests over gRPC and REST (Triton's `tritonclient`), to all three
  models: `tiny` and `encoder` on inputs drawn from a pool whose answers
  PyTorch computed in this process before the run (models/*.pt, the same
  TorchScript files; the export's reference pair is in the pool), `identity`
  on a fresh random input that must come back bit for bit;
- requests that must be refused, each with its status and message: an
  unknown model (NOT_FOUND / 404), a wrong shape and a wrong datatype
  (INVALID_ARGUMENT / 400);
- abrupt disconnects: a raw socket that sends half a request (HTTP/1 head
  or body, HTTP/2 preface and half a frame) and closes, now and then with a
  reset (SO_LINGER 0);
- system shared memory: regions created, registered (gRPC or REST),
  requests whose inputs and outputs lie in them (answers read back from the
  output region and checked), unregistered and destroyed;
- now and then, new client objects (new connections).

Memory and descriptors are sampled with the server quiet: the clients run a
warm-up round first (`--warmup-s`, default 60 s, its answers checked too),
all exit, and once the server's descriptor count has settled its VmRSS
(/proc/PID/status) and open descriptors (/proc/PID/fd) are the start
figures; the soak round follows, its clients exit, and the same figures are
the end. Growth is end over start. Exits non-zero when an answer was wrong,
an error was unexpected, the server died or did not stop cleanly on
SIGTERM, or RSS or descriptors grew by more than `--max-growth` (5 %).
"""
import argparse
import collections
import multiprocessing as mp
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
POOL = 8  # inputs per model with PyTorch's answers
SHAPE = [1, 3, 128, 128]


def default_bin():
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target")
    return os.path.join(target, "release", "uminfer")


def reference_pool(models_dir, path):
    """Inputs and PyTorch's answers for `tiny` and `encoder`, saved to `path` (npz)."""
    import torch

    torch.set_num_threads(1)
    rng = np.random.default_rng(20260)
    arrays = {}
    tiny = torch.jit.load(os.path.join(models_dir, "tiny.pt")).eval()
    encoder = torch.jit.load(os.path.join(models_dir, "encoder.pt")).eval()
    enc_in = dict(np.load(os.path.join(models_dir, "encoder.inputs.npz")))
    enc_out = dict(np.load(os.path.join(models_dir, "encoder.expected.npz")))
    with torch.no_grad():
        for i in range(POOL):
            x = np.load(os.path.join(models_dir, "tiny.input.npy")) if i == 0 else rng.standard_normal(SHAPE, dtype=np.float32)
            arrays[f"tiny{i}.x"] = x
            arrays[f"tiny{i}.output__0"] = np.load(os.path.join(models_dir, "tiny.expected.npy")) if i == 0 else tiny(torch.from_numpy(x)).numpy()
            if i == 0:
                ids, mask, out = enc_in["input_ids"], enc_in["attention_mask"], enc_out
            else:
                ids = rng.integers(0, 1000, size=(1, 32), dtype=np.int64)
                mask = np.ones((1, 32), dtype=np.int64)
                mask[:, 32 - int(rng.integers(0, 16)):] = 0
                o = encoder(torch.from_numpy(ids), torch.from_numpy(mask))
                out = {"output__0": o[0].numpy(), "output__1": o[1].numpy()}
            arrays[f"encoder{i}.input_ids"], arrays[f"encoder{i}.attention_mask"] = ids, mask
            arrays[f"encoder{i}.output__0"], arrays[f"encoder{i}.output__1"] = out["output__0"], out["output__1"]
    np.savez(path, **arrays)


class Tally:
    """What one client process saw."""

    def __init__(self):
        self.checked = collections.Counter()  # answers checked, by kind
        self.wrong = collections.Counter()
        self.refused = collections.Counter()  # expected refusals, by kind
        self.unexpected = collections.Counter()  # unexpected errors, by kind
        self.disconnects = collections.Counter()
        self.registrations = 0
        self.examples = []  # a few messages of wrong answers and unexpected errors

    def note(self, what):
        if len(self.examples) < 8:
            self.examples.append(what[:300])


def close_enough(got, want, exact):
    """PyTorch's answer within 1e-5 × max(1, max |want|), or bit for bit when `exact`."""
    if got is None or got.shape != want.shape or got.dtype != want.dtype:
        return False
    if exact or want.dtype != np.float32:
        return np.array_equal(got, want)
    return float(np.abs(got - want).max()) <= 1e-5 * max(1.0, float(np.abs(want).max()))


def client_process(grpc_url, http_url, pool_path, seconds, tag, out):
    """One client process: random actions for `seconds`; puts its Tally on `out`."""
    tally = Tally()
    try:
        run_client(grpc_url, http_url, pool_path, seconds, tag, tally)
    except Exception as e:  # a process that fails still reports, as an unexpected error
        tally.unexpected["client process failed"] += 1
        tally.note(f"client process failed: {e!r}")
    out.put(tally.__dict__)


def run_client(grpc_url, http_url, pool_path, seconds, tag, tally):
    import tritonclient.grpc as tg
    import tritonclient.http as th
    import tritonclient.utils.shared_memory as shm
    from tritonclient.utils import InferenceServerException

    pool = dict(np.load(pool_path))
    rng = np.random.default_rng(abs(hash(tag)) % (1 << 32))
    pick = random.Random(tag)
    grpc_host, grpc_port = grpc_url.rsplit(":", 1)
    http_host, http_port = http_url.rsplit(":", 1)
    clients = {}

    def client(api):
        if api not in clients:
            clients[api] = tg.InferenceServerClient(grpc_url) if api == "grpc" else th.InferenceServerClient(http_url, network_timeout=120)
        return clients[api]

    def renew():
        for c in clients.values():
            c.close()
        clients.clear()

    def request(model):
        """(feeds, wanted answers) of a good request to `model`."""
        if model == "identity":
            x = rng.standard_normal(SHAPE, dtype=np.float32)
            return {"x": x}, {"output__0": x}
        i = int(rng.integers(0, POOL))
        if model == "tiny":
            return {"x": pool[f"tiny{i}.x"]}, {"output__0": pool[f"tiny{i}.output__0"]}
        return ({"input_ids": pool[f"encoder{i}.input_ids"], "attention_mask": pool[f"encoder{i}.attention_mask"]},
                {"output__0": pool[f"encoder{i}.output__0"], "output__1": pool[f"encoder{i}.output__1"]})

    def inputs_of(tm, feeds):
        inputs = []
        for name, a in feeds.items():
            inp = tm.InferInput(name, list(a.shape), tm.np_to_triton_dtype(a.dtype))
            inp.set_data_from_numpy(a)
            inputs.append(inp)
        return inputs

    def verify(kind, model, got, want):
        """One answer checked: wrong when any of its outputs is (identity's: not bit for bit its input)."""
        tally.checked[kind] += 1
        bad = [name for name, w in want.items() if not close_enough(got.get(name), w, exact=model == "identity")]
        if bad:
            tally.wrong[kind] += 1
            tally.note(f"{kind}: wrong answer for {', '.join(bad)}")

    def good(api):
        model = pick.choice(["tiny", "identity", "encoder"])
        tm = tg if api == "grpc" else th
        feeds, want = request(model)
        outputs = [tm.InferRequestedOutput(n) for n in want]
        r = client(api).infer(model, inputs_of(tm, feeds), outputs=outputs, request_id=f"{tag}")
        verify(f"{api} {model}", model, {n: r.as_numpy(n) for n in want}, want)

    def refused(api):
        tm = tg if api == "grpc" else th
        x = pool["tiny0.x"]
        how = pick.choice(["unknown model", "wrong shape", "wrong datatype"])
        if how == "unknown model":
            model, feeds, status, needle = "nope", {"x": x}, ("StatusCode.NOT_FOUND", "404"), "no model named"
        elif how == "wrong shape":
            model, feeds, status, needle = "tiny", {"x": x[:, :2].copy()}, ("StatusCode.INVALID_ARGUMENT", "400"), "shape"
        else:
            model, feeds, status, needle = "tiny", {"x": x.astype(np.float64)}, ("StatusCode.INVALID_ARGUMENT", "400"), "FP64"
        kind = f"{api} {how}"
        try:
            client(api).infer(model, inputs_of(tm, feeds))
        except InferenceServerException as e:
            if str(e.status()) in status and needle in (e.message() or ""):
                tally.refused[kind] += 1
                return
            tally.unexpected[f"{kind}: refused with {e.status()}"] += 1
            tally.note(f"{kind}: {e.status()} {e.message()!r}")
            return
        tally.unexpected[f"{kind}: answered"] += 1
        tally.note(f"{kind}: answered instead of refused")

    def disconnect():
        api = pick.choice(["grpc", "http"])
        host, port = (grpc_host, int(grpc_port)) if api == "grpc" else (http_host, int(http_port))
        if api == "http":
            body = b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3, 128, 128], "data": [0.5, '
            head = b"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n"
            half = head + (b"\r\n" + body if pick.random() < 0.5 else b"")
        else:
            # The client preface, an empty SETTINGS frame, then a HEADERS frame header announcing 64 bytes and 10 of them.
            half = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00" + b"\x00\x00\x40\x01\x04\x00\x00\x00\x01" + bytes(10)
        s = socket.create_connection((host, port), timeout=10)
        try:
            s.sendall(half[: pick.randint(1, len(half))])
            if pick.random() < 0.3:  # a reset instead of a FIN
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        finally:
            s.close()
        tally.disconnects[api] += 1

    def shared_memory(api, serial):
        model = pick.choice(["tiny", "identity", "encoder"])
        tm = tg if api == "grpc" else th
        feeds, want = request(model)
        n_in, n_out = sum(a.nbytes for a in feeds.values()), sum(a.nbytes for a in want.values())
        names = (f"{tag}-{serial}-in", f"{tag}-{serial}-out")
        handles = (shm.create_shared_memory_region(names[0], f"/{names[0]}", n_in), shm.create_shared_memory_region(names[1], f"/{names[1]}", n_out))
        c = client(api)
        registered = []
        try:
            for name, size in zip(names, (n_in, n_out)):
                c.register_system_shared_memory(name, f"/{name}", size)
                registered.append(name)
                tally.registrations += 1
            for _ in range(pick.randint(1, 4)):
                shm.set_shared_memory_region(handles[0], list(feeds.values()))
                inputs, outputs, offset = [], [], 0
                for name, a in feeds.items():
                    inp = tm.InferInput(name, list(a.shape), tm.np_to_triton_dtype(a.dtype))
                    inp.set_shared_memory(names[0], a.nbytes, offset)
                    inputs.append(inp)
                    offset += a.nbytes
                offset = 0
                for name, a in want.items():
                    o = tm.InferRequestedOutput(name)
                    o.set_shared_memory(names[1], a.nbytes, offset)
                    outputs.append(o)
                    offset += a.nbytes
                c.infer(model, inputs, outputs=outputs)
                got, offset = {}, 0
                for name, a in want.items():
                    got[name] = shm.get_contents_as_numpy(handles[1], a.dtype, list(a.shape), offset=offset)
                    offset += a.nbytes
                verify(f"{api}-shm {model}", model, got, want)
                feeds, want = request(model)  # the next request: other inputs of the same sizes
        finally:
            for name in registered:
                c.unregister_system_shared_memory(name)
            for h in handles:
                shm.destroy_shared_memory_region(h)

    actions = [("good", 40), ("refused", 15), ("disconnect", 10), ("shm", 15), ("renew", 2)]
    names, weights = zip(*actions)
    deadline = time.monotonic() + seconds
    serial = 0
    while time.monotonic() < deadline:
        serial += 1
        action = pick.choices(names, weights)[0]
        api = "grpc" if pick.random() < 0.6 else "http"
        try:
            if action == "good":
                good(api)
            elif action == "refused":
                refused(api)
            elif action == "disconnect":
                disconnect()
            elif action == "shm":
                shared_memory(api, serial)
            else:
                renew()
        except Exception as e:  # anything else is unexpected: counted by kind, a few kept
            kind = f"{action} {api}: {type(e).__name__}"
            if isinstance(e, InferenceServerException):
                kind += f" {e.status()}"
            tally.unexpected[kind] += 1
            tally.note(f"{kind}: {e}")
            renew()
    renew()


def server_figures(pid):
    """(VmRSS in kB, open descriptors) of process `pid`."""
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def settled(pid, server):
    """The server's figures once its descriptor count has not changed for 3 s (at most 60 s)."""
    last, since, start = None, time.monotonic(), time.monotonic()
    while True:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with {server.returncode}")
        figures = server_figures(pid)
        if last is None or figures[1] != last[1]:
            since = time.monotonic()
        last = figures
        if time.monotonic() - since >= 3 or time.monotonic() - start >= 60:
            return figures
        time.sleep(0.5)


def round_of_clients(args, grpc_url, http_url, pool_path, seconds, label):
    """Runs the clients for `seconds`; returns their tallies merged."""
    ctx = mp.get_context("spawn")  # gRPC must not be forked
    out = ctx.Queue()
    procs = [ctx.Process(target=client_process, args=(grpc_url, http_url, pool_path, seconds, f"uminfer-soak-{os.getpid()}-{label}-{k}", out))
             for k in range(args.clients)]
    for p in procs:
        p.start()
    tallies = [out.get(timeout=seconds + 600) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    merged = Tally()
    for t in tallies:
        for field in ("checked", "wrong", "refused", "unexpected", "disconnects"):
            getattr(merged, field).update(t[field])
        merged.registrations += t["registrations"]
        for e in t["examples"]:
            merged.note(e)
    return merged


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0, help="length of the soak round (default 10)")
    ap.add_argument("--clients", type=int, default=16, help="client processes (default 16)")
    ap.add_argument("--warmup-s", type=float, default=60.0, help="length of the warm-up round before the start figures (default 60)")
    ap.add_argument("--bin", default=default_bin(), help="the uminfer binary (default: $CARGO_TARGET_DIR/release/uminfer or target/release/uminfer)")
    ap.add_argument("--models", default=os.path.join(ROOT, "models"), help="the models directory (default models/)")
    ap.add_argument("--workers", type=int, default=2, help="sessions per model (serve --workers, default 2)")
    ap.add_argument("--max-growth", type=float, default=5.0, help="largest RSS or descriptor growth in %% that passes (default 5)")
    args = ap.parse_args()
    if not os.access(args.bin, os.X_OK):
        sys.exit(f"no uminfer binary at {args.bin}: build it (cargo build --release) or give --bin PATH")

    work = tempfile.mkdtemp(prefix="uminfer-soak-")
    pool_path = os.path.join(work, "pool.npz")
    reference_pool(args.models, pool_path)
    log_path = os.path.join(work, "server.log")
    models = [f"{m}={os.path.join(args.models, m + '.pt')}" for m in ("tiny", "identity", "encoder")]
    cmd = [args.bin, "serve", "--grpc", "127.0.0.1:0", "--http", "127.0.0.1:0", "--workers", str(args.workers)]
    for m in models:
        cmd += ["--model", m]
    with open(log_path, "w") as log:
        server = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, text=True)
    addrs = {}
    reader = threading.Thread(target=lambda: addrs.update(line.strip().split("=", 1) for line in iter(server.stdout.readline, "") if "=" in line), daemon=True)
    reader.start()
    start = time.monotonic()
    while not {"grpc", "http"} <= addrs.keys():
        if server.poll() is not None or time.monotonic() - start > 180:
            server.kill()
            sys.exit(f"the server did not start; its log ({log_path}):\n{open(log_path).read()}")
        time.sleep(0.1)
    pid = server.pid
    print(f"soak: {' '.join(cmd)}")
    print(f"soak: server pid {pid}, gRPC {addrs['grpc']}, REST {addrs['http']}; {args.clients} client processes; "
          f"warm-up {args.warmup_s:.0f} s, soak {args.minutes:g} min")
    idle = server_figures(pid)
    print(f"server before any client: VmRSS {idle[0]} kB, {idle[1]} descriptors")

    t0 = time.monotonic()
    warm = round_of_clients(args, addrs["grpc"], addrs["http"], pool_path, args.warmup_s, "warmup")
    first = settled(pid, server)
    print(f"start (after the {args.warmup_s:.0f} s warm-up round, clients gone, server quiet): VmRSS {first[0]} kB, {first[1]} descriptors")
    t1 = time.monotonic()
    soak = round_of_clients(args, addrs["grpc"], addrs["http"], pool_path, args.minutes * 60, "soak")
    soak_s = time.monotonic() - t1
    last = settled(pid, server)
    print(f"end (after the {soak_s:.0f} s soak round, clients gone, server quiet): VmRSS {last[0]} kB, {last[1]} descriptors")

    server.terminate()
    try:
        code = server.wait(timeout=60)
    except subprocess.TimeoutExpired:
        server.kill()
        code = "killed after 60 s"
    total_s = time.monotonic() - t0

    failures = []
    for label, t in (("warm-up", warm), ("soak", soak)):
        print(f"\n{label} round: {sum(t.checked.values())} answers checked, {sum(t.wrong.values())} wrong, "
              f"{sum(t.refused.values())} expected refusals, {sum(t.unexpected.values())} unexpected errors, "
              f"{sum(t.disconnects.values())} abrupt disconnects, {t.registrations} shared memory registrations")
        for title, counter in (("answers checked", t.checked), ("wrong answers", t.wrong), ("expected refusals", t.refused),
                               ("unexpected errors", t.unexpected), ("abrupt disconnects", t.disconnects)):
            if counter:
                print(f"  {title}: " + ", ".join(f"{k} {v}" for k, v in sorted(counter.items())))
        for e in t.examples:
            print(f"  example: {e}")
        if sum(t.wrong.values()):
            failures.append(f"{label}: {sum(t.wrong.values())} wrong answers")
        if sum(t.unexpected.values()):
            failures.append(f"{label}: {sum(t.unexpected.values())} unexpected errors")

    rss_growth = 100.0 * (last[0] - first[0]) / first[0]
    fd_growth = 100.0 * (last[1] - first[1]) / first[1]
    print(f"\nserver VmRSS: start {first[0]} kB, end {last[0]} kB, growth {rss_growth:+.2f} %")
    print(f"server descriptors: start {first[1]}, end {last[1]}, growth {fd_growth:+.2f} %")
    print(f"server exit on SIGTERM: {code}; total {total_s:.0f} s")
    warnings = [line.rstrip() for line in open(log_path) if " WARN " in line or " ERROR " in line]
    print(f"server log: {len(warnings)} WARN/ERROR lines")
    for line in warnings[:10]:
        print(f"  {line}")
    if rss_growth > args.max_growth:
        failures.append(f"VmRSS grew {rss_growth:.2f} % (over {args.max_growth} %)")
    if fd_growth > args.max_growth:
        failures.append(f"descriptors grew {fd_growth:.2f} % (over {args.max_growth} %)")
    if code != 0:
        failures.append(f"the server's exit on SIGTERM: {code}")
    print("\nresult: " + ("FAILED: " + "; ".join(failures) if failures else "passed"))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
