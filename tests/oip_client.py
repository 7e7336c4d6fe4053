"""Drives `uminfer serve --grpc` with Triton's own, unmodified Python client
(tritonclient[grpc], pinned in ci/requirements.txt) for tests/oip_python.rs.

    python tests/oip_client.py MODE URL [ARGS...]

Modes print `key=value` lines on stdout and exit non-zero on any mismatch.
Typed contents and malformed requests go through the same package's
generated stub (tritonclient.grpc.service_pb2_grpc), since InferInput only
sends well-formed raw bytes.
"""
import sys
import threading
import time

import grpc
import numpy as np
import tritonclient.grpc as tg
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pbg
from tritonclient.utils import InferenceServerException

from oip_checks import SHAPE, check, close, expect_error, fail


def raw_input(x, name="INPUT__0", datatype="FP32"):
    i = tg.InferInput(name, list(x.shape), datatype)
    i.set_data_from_numpy(x)
    return i


def health(url, models):
    c = tg.InferenceServerClient(url)
    check(c.is_server_live(), "server not live")
    check(c.is_server_ready(), "server not ready")
    check(not c.is_model_ready("no-such-model"), "unknown model reported ready")
    meta = c.get_server_metadata(as_json=True)
    check(meta["name"] == "uminfer", f"server metadata {meta}")
    for spec in models:
        name, out = spec.split(":")
        check(c.is_model_ready(name), f"{name} not ready")
        m = c.get_model_metadata(name, as_json=True)
        got = (m["name"], m["versions"], m["platform"],
               [(t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in m["inputs"]],
               [(t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in m["outputs"]])
        want = (name, ["1"], "pytorch_libtorch", [("x", "FP32", SHAPE)],
                [("output__0", "FP32", [int(d) for d in out.split(",")])])
        check(got == want, f"metadata of {name}: {got}, expected {want}")
        print(f"metadata_{name}=ok")
        cfg = c.get_model_config(name, as_json=True)["config"]
        tensors = lambda ts: [(t["name"], t["data_type"], [int(d) for d in t["dims"]]) for t in ts]
        got = (cfg["name"], cfg["platform"], cfg["backend"], int(cfg.get("max_batch_size", 0)), tensors(cfg["input"]), tensors(cfg["output"]),
               [(g["kind"], int(g["count"])) for g in cfg["instance_group"]])
        want = (name, "pytorch_libtorch", "pytorch", 0, [("x", "TYPE_FP32", SHAPE)],
                [("output__0", "TYPE_FP32", [int(d) for d in out.split(",")])], [("KIND_CPU", 1)])
        check(got == want, f"config of {name}: {got}, expected {want}")
        print(f"config_{name}=ok")
    index = c.get_model_repository_index(as_json=True)["models"]
    got = sorted((m["name"], m["version"], m["state"]) for m in index)
    want = sorted((spec.split(":")[0], "1", "READY") for spec in models)
    check(got == want, f"repository index {got}, expected {want}")
    print("repository_index=ok")
    # grpc.health.v1.Health/Check, as a Kubernetes `grpc` probe sends it; the
    # two messages are encoded by hand (field 1: service name / status enum).
    check_rpc = grpc.insecure_channel(url).unary_unary(
        "/grpc.health.v1.Health/Check", request_serializer=lambda s: b"\n" + bytes([len(s)]) + s.encode() if s else b"",
        response_deserializer=lambda b: b[1] if len(b) == 2 and b[0] == 8 else 0)
    for service in ["", "liveness", "inference.GRPCInferenceService"]:
        check(check_rpc(service) == 1, f"grpc.health.v1 Check({service!r}) is not SERVING")
    try:
        check_rpc("no-such-service")
    except grpc.RpcError as e:
        check(e.code() == grpc.StatusCode.NOT_FOUND, f"Check of an unknown service: {e.code()}")
    else:
        fail("Check of an unknown service answered")
    print("grpc_health=ok")
    print("health=ok")


def infer(url, name, x_path, expected_path):
    x, expected = np.load(x_path), np.load(expected_path)
    c = tg.InferenceServerClient(url)
    r = c.infer(name, [raw_input(x)], outputs=[tg.InferRequestedOutput("OUTPUT__0")], request_id="raw-1")
    check(r.get_response().id == "raw-1", f"response id {r.get_response().id!r}")
    print(f"raw_diff={close(r.as_numpy('OUTPUT__0'), expected, 'raw_input_contents')}")
    stub = pbg.GRPCInferenceServiceStub(grpc.insecure_channel(url))
    req = pb.ModelInferRequest(model_name=name, id="typed-1")
    t = req.inputs.add(name="INPUT__0", datatype="FP32", shape=list(x.shape))
    t.contents.fp32_contents.extend(x.ravel().tolist())
    resp = stub.ModelInfer(req)
    check(resp.id == "typed-1" and resp.outputs[0].datatype == "FP32", f"typed response header {resp.outputs[0]}")
    y = np.frombuffer(resp.raw_output_contents[0], np.float32).reshape(list(resp.outputs[0].shape))
    print(f"typed_diff={close(y, expected, 'contents.fp32_contents')}")


def errors(url, x_path, expected_path):
    x, expected = np.load(x_path), np.load(expected_path)
    c = tg.InferenceServerClient(url)
    stub = pbg.GRPCInferenceServiceStub(grpc.insecure_channel(url))

    def expect(label, code, needle, call):
        try:
            call()
        except InferenceServerException as e:
            got_code, msg = e.status(), e.message()
        except grpc.RpcError as e:
            got_code, msg = str(e.code()), e.details()
        else:
            fail(f"{label}: no error")
        check(got_code == str(code) and needle in msg, f"{label}: {got_code} {msg!r}, expected {code} containing {needle!r}")
        print(f"{label}={got_code}")
        # The server keeps serving: a good request right after each bad one.
        close(c.infer("tiny", [raw_input(x)]).as_numpy("OUTPUT__0"), expected, f"good request after {label}")

    def request(datatype="FP32", shape=SHAPE, data=None, name="INPUT__0"):
        req = pb.ModelInferRequest(model_name="tiny")
        req.inputs.add(name=name, datatype=datatype, shape=shape)
        req.raw_input_contents.append(x.tobytes() if data is None else data)
        return req

    SC = grpc.StatusCode
    expect("unknown_model", SC.NOT_FOUND, 'no model named "nope"', lambda: c.infer("nope", [raw_input(x)]))
    expect("unknown_version", SC.NOT_FOUND, "only version", lambda: c.infer("tiny", [raw_input(x)], model_version="2"))
    small = np.zeros((1, 3, 64, 64), np.float32)
    expect("wrong_shape", SC.INVALID_ARGUMENT, 'has shape [1, 3, 64, 64]; input "x" is FP32 [1, 3, 128, 128]', lambda: c.infer("tiny", [raw_input(small)]))
    expect("wrong_dtype", SC.INVALID_ARGUMENT, 'has datatype FP64; input "x" is FP32', lambda: c.infer("tiny", [raw_input(x.astype(np.float64), datatype="FP64")]))
    expect("wrong_byte_length", SC.INVALID_ARGUMENT, "needs 196608",
           lambda: stub.ModelInfer(request(data=x.tobytes()[:-4])))
    expect("missing_input", SC.INVALID_ARGUMENT, 'missing input "x"',
           lambda: stub.ModelInfer(pb.ModelInferRequest(model_name="tiny")))
    expect("wrong_input_name", SC.INVALID_ARGUMENT, 'has no input "input"; model "tiny" takes "x" FP32 [1, 3, 128, 128]', lambda: c.infer("tiny", [raw_input(x, name="input")]))
    expect("unknown_output", SC.INVALID_ARGUMENT, 'no output "logits"',
           lambda: c.infer("tiny", [raw_input(x)], outputs=[tg.InferRequestedOutput("logits")]))
    expect("unimplemented_rpc", SC.UNIMPLEMENTED, "LogSettings", lambda: c.get_log_settings())
    big = np.zeros((1, 3, 1024, 1024), np.float32)
    expect("too_large", SC.OUT_OF_RANGE, "too large", lambda: c.infer("tiny", [raw_input(big)]))
    print("errors=ok")


def stream_collector(n):
    """A stream callback that keeps answers by request id and error
    messages; `done` is set once n of them have come."""
    answers, errors, done, lock = {}, [], threading.Event(), threading.Lock()

    def callback(result, error):
        with lock:
            if error is not None:
                errors.append(error.message())
            else:
                answers[result.get_response().id] = result.as_numpy("OUTPUT__0")
            if len(answers) + len(errors) == n:
                done.set()

    return callback, answers, errors, done


def stream(url, x_path, expected_path, n):
    """Sends n requests on one ModelStreamInfer stream without waiting
    (identity with a random input each, and tiny), plus one bad request in
    the middle; checks that every answer matches its request id."""
    x, expected, n = np.load(x_path), np.load(expected_path), int(n)
    rng = np.random.default_rng(9)
    sent = {}
    callback, answers, errors, done = stream_collector(n + 1)
    c = tg.InferenceServerClient(url)
    c.start_stream(callback)
    for i in range(n):
        rid = f"s-{i}"
        if i % 2:
            sent[rid] = ("tiny", expected)
            c.async_stream_infer("tiny", [raw_input(x)], request_id=rid)
        else:
            xi = rng.standard_normal(SHAPE, dtype=np.float32)
            sent[rid] = ("identity", xi)
            c.async_stream_infer("identity", [raw_input(xi)], request_id=rid)
        if i == n // 2:
            c.async_stream_infer("tiny", [raw_input(np.zeros((1, 3, 8, 8), np.float32))], request_id="bad")
    check(done.wait(120), f"{len(answers)} answers and {len(errors)} errors of {n + 1}")
    c.stop_stream()
    check(sorted(answers) == sorted(sent), f"answered ids {sorted(answers)}")
    for rid, (model, want) in sent.items():
        close(answers[rid], want, f"stream request {rid} ({model})")
    check(len(errors) == 1 and "[InvalidArgument]" in errors[0] and "shape [1, 3, 8, 8]" in errors[0], f"errors {errors}")
    print(f"stream_matched={len(answers)}")
    print("stream_errors=1")


def system_shm(url, x_path, expected_path):
    """Triton's system shared memory extension through tritonclient.utils.shared_memory:
    inputs read from and outputs written to registered regions, offsets
    (aligned and not), status, unregistering, and every refusal."""
    import os
    import tritonclient.utils.shared_memory as shm

    x, expected = np.load(x_path), np.load(expected_path)
    nx, ny = x.nbytes, expected.nbytes
    c = tg.InferenceServerClient(url)
    c.unregister_system_shared_memory()
    tag = f"uminfer-oip-{os.getpid()}"
    hin = shm.create_shared_memory_region("in", f"/{tag}-in", nx + 64)
    hout = shm.create_shared_memory_region("out", f"/{tag}-out", ny)
    try:
        c.register_system_shared_memory("in", f"/{tag}-in", nx + 64)
        c.register_system_shared_memory("out", f"/{tag}-out", ny)
        status = c.get_system_shared_memory_status(as_json=True)["regions"]
        check(sorted(status) == ["in", "out"] and int(status["in"]["byte_size"]) == nx + 64, f"status {status}")

        def run(offset, out_region="out", out_size=ny, in_region="in", in_size=nx):
            i = tg.InferInput("INPUT__0", list(x.shape), "FP32").set_shared_memory(in_region, in_size, offset)
            o = tg.InferRequestedOutput("OUTPUT__0")
            o.set_shared_memory(out_region, out_size)
            r = c.infer("tiny", [i], outputs=[o])
            check(not r.get_response().raw_output_contents, "output in the response as well as in shared memory")
            return shm.get_contents_as_numpy(hout, np.float32, list(r.get_output("OUTPUT__0").shape))

        for offset in (0, 64, 2):  # 2: not 4-byte aligned, decoded instead of read in place
            shm.set_shared_memory_region(hin, [x], offset=offset)
            close(run(offset), expected, f"shared memory input at offset {offset}")
            print(f"offset_{offset}=ok")

        SC = grpc.StatusCode
        expect_error("register_twice", SC.ALREADY_EXISTS, "already registered", lambda: c.register_system_shared_memory("in", f"/{tag}-in", nx))
        expect_error("register_missing_key", SC.INVALID_ARGUMENT, "cannot open", lambda: c.register_system_shared_memory("nokey", f"/{tag}-none", 8))
        expect_error("register_too_large", SC.INVALID_ARGUMENT, "inside its", lambda: c.register_system_shared_memory("big", f"/{tag}-out", ny + 1))
        expect_error("input_outside_region", SC.INVALID_ARGUMENT, "lies outside", lambda: run(65))
        expect_error("input_wrong_size", SC.INVALID_ARGUMENT, f"needs {nx}", lambda: run(0, in_size=nx - 4))
        expect_error("output_region_too_small", SC.INVALID_ARGUMENT, f"needs {ny}", lambda: run(0, out_size=ny - 4))
        expect_error("unregistered_region", SC.INVALID_ARGUMENT, "is not registered", lambda: run(0, in_region="nope"))
        if os.geteuid() == 0:
            other = shm.create_shared_memory_region("other", f"/{tag}-other", 64)
            try:
                os.chown(f"/dev/shm/{tag}-other", 65534, 65534)
                expect_error("other_users_region", SC.PERMISSION_DENIED, "owned by the server's user",
                             lambda: c.register_system_shared_memory("other", f"/{tag}-other", 64))
            finally:
                shm.destroy_shared_memory_region(other)
        else:
            print("other_users_region=skipped")

        c.unregister_system_shared_memory("in")
        check(sorted(c.get_system_shared_memory_status(as_json=True)["regions"]) == ["out"], "in still registered")
        expect_error("after_unregister", SC.INVALID_ARGUMENT, "is not registered", lambda: run(0))
        c.unregister_system_shared_memory()
        check(not c.get_system_shared_memory_status(as_json=True).get("regions"), "regions left after unregistering all")
        close(c.infer("tiny", [raw_input(x)]).as_numpy("OUTPUT__0"), expected, "raw request after the shared memory ones")
        print("shm=ok")
    finally:
        shm.destroy_shared_memory_region(hin)
        shm.destroy_shared_memory_region(hout)


def unregister_in_flight(url, x_path, expected_path, n):
    """Sends n resnet18 requests at once, each with its input and output in
    a system shared memory region of its own, and unregisters every region
    as soon as the first answer is back (the other requests are queued or
    running on the server). Every answer must then be right (the server
    holds a region a request uses until that request ends) or, for a request
    that reached the server after the unregistering, the clear
    `is not registered` refusal. Prints how many right answers came after
    the unregistering (the test wants some where requests can overlap it).
    Then the server still serves."""
    import os
    import tritonclient.utils.shared_memory as shm

    x, expected = np.load(x_path), np.load(expected_path)
    nx, ny = x.nbytes, expected.nbytes
    c = tg.InferenceServerClient(url)
    c.unregister_system_shared_memory()
    tag = f"uminfer-oip-uif-{os.getpid()}"
    handles = []
    first, done, lock, results = threading.Event(), threading.Event(), threading.Lock(), {}
    try:
        for k in range(n):
            hin = shm.create_shared_memory_region(f"in{k}", f"/{tag}-in{k}", nx)
            hout = shm.create_shared_memory_region(f"out{k}", f"/{tag}-out{k}", ny)
            handles += [hin, hout]
            shm.set_shared_memory_region(hin, [x])
            c.register_system_shared_memory(f"in{k}", f"/{tag}-in{k}", nx)
            c.register_system_shared_memory(f"out{k}", f"/{tag}-out{k}", ny)

        def callback(result, error):
            with lock:
                key = result.get_response().id if error is None else None
                results[key if key is not None else f"error{len(results)}"] = (time.monotonic(), result, error)
                first.set()
                if len(results) == n:
                    done.set()

        for k in range(n):
            i = tg.InferInput("INPUT__0", list(x.shape), "FP32").set_shared_memory(f"in{k}", nx)
            o = tg.InferRequestedOutput("OUTPUT__0")
            o.set_shared_memory(f"out{k}", ny)
            c.async_infer("resnet18", [i], callback, request_id=str(k), outputs=[o])
        check(first.wait(120), "no answer to any of the requests")
        c.unregister_system_shared_memory()
        unregistered = time.monotonic()
        check(not c.get_system_shared_memory_status(as_json=True).get("regions"), "regions left after unregistering all")
        check(done.wait(120), f"only {len(results)} of {n} answers")
        ok = ok_after = refused = 0
        for key, (t, result, error) in results.items():
            if error is not None:
                check(error.status() == "StatusCode.INVALID_ARGUMENT" and "is not registered" in error.message(),
                      f"error {error.status()} {error.message()}")
                refused += 1
                continue
            k = int(key)
            y = shm.get_contents_as_numpy(handles[2 * k + 1], np.float32, list(result.get_output("OUTPUT__0").shape))
            close(y, expected, f"request {k}")
            ok += 1
            ok_after += t > unregistered
        close(c.infer("resnet18", [raw_input(x)]).as_numpy("OUTPUT__0"), expected, "raw request afterwards")
        print(f"answers={ok + refused}")
        print(f"right_after_unregister={ok_after}")
    finally:
        for h in handles:
            shm.destroy_shared_memory_region(h)


def busy(url, name, x_path, expected_path, n):
    """Sends n requests of model NAME on one ModelStreamInfer stream without
    waiting and checks every answer against its request id; meanwhile a
    second client calls ServerLive every 5 ms. Prints the number of answers
    and the ServerLive latencies while the stream ran (for the log: the test
    asserts on the server's metrics, not on times)."""
    x, expected, n = np.load(x_path), np.load(expected_path), int(n)
    callback, answers, errors, done = stream_collector(n)
    c = tg.InferenceServerClient(url)
    c.start_stream(callback)
    for i in range(n):
        c.async_stream_infer(name, [raw_input(x)], request_id=f"b-{i}")
    health = tg.InferenceServerClient(url)
    live_ms = []
    while not done.wait(0.005):
        t = time.monotonic()
        check(health.is_server_live(), "ServerLive said not live")
        live_ms.append((time.monotonic() - t) * 1e3)
    c.stop_stream()
    check(not errors, f"errors {errors}")
    check(sorted(answers) == sorted(f"b-{i}" for i in range(n)), f"answered ids {sorted(answers)}")
    for rid, y in answers.items():
        close(y, expected, f"stream request {rid} ({name})")
    live_ms.sort()
    if live_ms:
        print(f"server_live_during_stream_ms=p50 {live_ms[len(live_ms) // 2]:.2f} max {live_ms[-1]:.2f} ({len(live_ms)} calls)", file=sys.stderr)
    print(f"busy_matched={len(answers)}")


def drain(url, x_path, expected_path, n, via="grpc"):
    """Sends n resnet18 requests at once (gRPC async calls, or with `via`
    "http" one REST call with JSON data per thread to the --http address
    `url`) and says so once the first answer is back (so the others have
    reached the server and are queued or running there, not still in this
    client), waits for the test's line on stdin (sent after SIGTERM), then
    checks every answer: correct, or refused for a request that reached the
    server after shutdown began (UNAVAILABLE; over REST 503, or a connection
    the closing server refused)."""
    import json
    import urllib.error
    import urllib.request

    x, expected = np.load(x_path), np.load(expected_path)
    first, done, lock, results = threading.Event(), threading.Event(), threading.Lock(), []

    def answered(i, y, refusal):
        with lock:
            results.append((time.monotonic(), i, y, refusal))
            first.set()
            if len(results) == n:
                done.set()

    if via == "grpc":
        c = tg.InferenceServerClient(url)
        for i in range(n):
            c.async_infer("resnet18", [raw_input(x)], lambda result, error, i=i: answered(i, result.as_numpy("OUTPUT__0") if error is None else None, error and error.status()),
                          request_id=str(i))
        refusals = ("StatusCode.UNAVAILABLE",)
    else:
        body = json.dumps({"inputs": [{"name": "INPUT__0", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]}).encode()

        def post(i):
            req = urllib.request.Request(f"http://{url}/v2/models/resnet18/infer", data=body, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=120) as r:
                    out = json.loads(r.read())["outputs"][0]
                    answered(i, np.array(out["data"], np.float32).reshape(out["shape"]), None)
            except urllib.error.HTTPError as e:
                answered(i, None, f"HTTP {e.code}")
            except (urllib.error.URLError, ConnectionError) as e:
                answered(i, None, f"connection: {e}")

        for i in range(n):
            threading.Thread(target=post, args=(i,), daemon=True).start()
        refusals = ("HTTP 503", "connection")
    check(first.wait(120), "no answer to any of the requests")
    print("inflight=yes", flush=True)
    sys.stdin.readline()
    signalled = time.monotonic()
    check(done.wait(120), f"only {len(results)} of {n} answers")
    ok_after = 0
    for t, i, y, refusal in results:
        if refusal is not None:
            check(refusal.startswith(refusals), f"request {i}: {refusal}")
            continue
        close(y, expected, f"request {i}")
        ok_after += t > signalled
    check(ok_after > 0, "no request finished after SIGTERM")
    print(f"ok_after_signal={ok_after}")


def count(url, x_path, expected_path, n_ok, n_bad, n_stream):
    """For the /metrics test: sends n_ok good unary tiny requests, n_bad of a
    wrong shape, one naming an unknown model, and n_stream good ones on a
    stream; checks every answer."""
    x, expected = np.load(x_path), np.load(expected_path)
    n_ok, n_bad, n_stream = int(n_ok), int(n_bad), int(n_stream)
    c = tg.InferenceServerClient(url)
    for i in range(n_ok):
        close(c.infer("tiny", [raw_input(x)]).as_numpy("OUTPUT__0"), expected, f"unary request {i}")
    bad = np.zeros((1, 3, 8, 8), np.float32)
    for i in range(n_bad):
        try:
            c.infer("tiny", [raw_input(bad)])
        except InferenceServerException as e:
            check(e.status() == "StatusCode.INVALID_ARGUMENT", f"bad request {i}: {e.status()} {e.message()}")
        else:
            fail(f"bad request {i} was answered")
    try:
        c.infer("no-such-model", [raw_input(x)])
    except InferenceServerException as e:
        check(e.status() == "StatusCode.NOT_FOUND", f"unknown model: {e.status()} {e.message()}")
    else:
        fail("a request for an unknown model was answered")
    answers, done, lock = [], threading.Event(), threading.Lock()

    def callback(result, error):
        with lock:
            answers.append((result, error))
            if len(answers) == n_stream:
                done.set()

    c.start_stream(callback)
    for i in range(n_stream):
        c.async_stream_infer("tiny", [raw_input(x)], request_id=f"c-{i}")
    check(done.wait(120), f"{len(answers)} of {n_stream} stream answers")
    c.stop_stream()
    for result, error in answers:
        check(error is None, f"stream error {error}")
        close(result.as_numpy("OUTPUT__0"), expected, f"stream request {result.get_response().id}")
    print("count=ok")


def stats(url, name):
    """Prints the ModelStatistics counts of `name` (key=value), after
    checking that every phase's time is positive when it has a count, that
    the last inference is recent, and that asking for every model includes it."""
    c = tg.InferenceServerClient(url)
    (m,) = c.get_inference_statistics(name, as_json=True)["model_stats"]
    check(m["name"] == name and m["version"] == "1", f"statistics of {m.get('name')} version {m.get('version')}")
    i = m["inference_stats"]
    phases = ["success", "fail", "queue", "compute_input", "compute_infer", "compute_output"]
    for p in phases:
        count, ns = int(i.get(p, {}).get("count", 0)), int(i.get(p, {}).get("ns", 0))
        check((count == 0) == (ns == 0), f"{p}: count {count}, ns {ns}")
    check(abs(time.time() * 1000 - int(m["last_inference"])) < 600_000, f"last_inference {m['last_inference']} is not recent")
    every = c.get_inference_statistics("", as_json=True)["model_stats"]
    check(name in [s["name"] for s in every], f"{name} missing from every model's statistics {[s['name'] for s in every]}")
    print(" ".join([f"inference_count={int(m.get('inference_count', 0))}", f"execution_count={int(m.get('execution_count', 0))}"]
                   + [f"{p}={int(i.get(p, {}).get('count', 0))}" for p in phases]))


def admission(url, http, x_path, expected_path):
    """Under --max-calls 1: while one client's stream is open, another
    client's unary call, stream and REST inference are refused with
    RESOURCE_EXHAUSTED (429), its health and metadata calls are answered;
    once the stream closes, its unary call is answered."""
    import json
    import urllib.error
    import urllib.request

    x, expected = np.load(x_path), np.load(expected_path)
    holder, other = tg.InferenceServerClient(url), tg.InferenceServerClient(url)
    answered = threading.Event()
    holder.start_stream(lambda result, error: answered.set())
    holder.async_stream_infer("tiny", [raw_input(x)], request_id="holder")
    check(answered.wait(60), "the holder's stream was not answered")
    expect_error("unary_while_full", "StatusCode.RESOURCE_EXHAUSTED", "--max-calls", lambda: other.infer("tiny", [raw_input(x)]))
    check(other.is_server_live() and other.is_server_ready(), "health refused while full")
    check(other.get_model_metadata("tiny", as_json=True)["name"] == "tiny", "metadata refused while full")
    print("health_while_full=answered")
    errors = []
    got_error = threading.Event()
    other.start_stream(lambda result, error: (errors.append(error), got_error.set()))
    try:
        other.async_stream_infer("tiny", [raw_input(x)], request_id="refused")
    except InferenceServerException:
        pass  # refused before the request went out: the callback has the reason
    check(got_error.wait(60), "the second stream got no answer")
    e = errors[0]
    check(isinstance(e, InferenceServerException) and e.status() == "StatusCode.RESOURCE_EXHAUSTED" and "--max-calls" in e.message(),
          f"second stream: {e!r}")
    print("stream_while_full=StatusCode.RESOURCE_EXHAUSTED")
    other.stop_stream()
    body = json.dumps({"inputs": [{"name": "INPUT__0", "datatype": "FP32", "shape": SHAPE, "data": x.ravel().tolist()}]}).encode()
    try:
        urllib.request.urlopen(urllib.request.Request(f"http://{http}/v2/models/tiny/infer", data=body, method="POST"), timeout=30)
        fail("a REST inference was answered while full")
    except urllib.error.HTTPError as e:
        check(e.code == 429 and "--max-calls" in json.loads(e.read())["error"], f"REST while full: {e.code}")
    print("rest_while_full=429")
    holder.stop_stream()
    deadline = time.time() + 10
    while True:  # the holder's stream ends on the server shortly after the client closes it
        try:
            close(other.infer("tiny", [raw_input(x)]).as_numpy("OUTPUT__0"), expected, "unary call after the stream closed")
            break
        except InferenceServerException as e:
            check(e.status() == "StatusCode.RESOURCE_EXHAUSTED" and time.time() < deadline, f"after the stream closed: {e.status()} {e.message()}")
            time.sleep(0.05)
    print("after_stream_closed=answered")


def shapes(url, x_path, expected_path, identity_shape):
    """`tiny` at the default shape beside `identity` at a shape of its own
    (`--input-shape identity=DIMS`): each model's metadata and config show its
    shape, each answers at its shape (identity returns its random input), and
    each refuses the other's shape."""
    x, expected = np.load(x_path), np.load(expected_path)
    dims = [int(d) for d in identity_shape.split(",")]
    c = tg.InferenceServerClient(url)
    for name, shape in (("tiny", SHAPE), ("identity", dims)):
        m = c.get_model_metadata(name, as_json=True)
        check([int(d) for d in m["inputs"][0]["shape"]] == shape, f"{name} metadata input {m['inputs'][0]}")
        cfg = c.get_model_config(name, as_json=True)["config"]
        check([int(d) for d in cfg["input"][0]["dims"]] == shape, f"{name} config input {cfg['input'][0]}")
    close(c.infer("tiny", [raw_input(x)]).as_numpy("OUTPUT__0"), expected, "tiny at the default shape")
    r = np.random.default_rng(7).standard_normal(dims).astype(np.float32)
    close(c.infer("identity", [raw_input(r)]).as_numpy("OUTPUT__0"), r, "identity at its own shape")
    expect_error("identity_at_tiny_shape", "StatusCode.INVALID_ARGUMENT", f"input \"x\" is FP32 {dims}",
                 lambda: c.infer("identity", [raw_input(x)]))
    expect_error("tiny_at_identity_shape", "StatusCode.INVALID_ARGUMENT", f"input \"x\" is FP32 {SHAPE}", lambda: c.infer("tiny", [raw_input(r)]))
    print("shapes=ok")


def bounded(url, x_path, expected_path, expect):
    """Holds a stream open on the client's connection, then makes a unary
    call on the same connection with a 2 s deadline. Under --max-streams 1
    the call must wait for a free stream (DEADLINE_EXCEEDED: `expect` is
    "waits"); otherwise it is answered (`expect` is "answered"). After the
    stream closes, a unary call is answered either way."""
    x, expected = np.load(x_path), np.load(expected_path)
    c = tg.InferenceServerClient(url)
    answered = threading.Event()
    c.start_stream(lambda result, error: answered.set())
    c.async_stream_infer("tiny", [raw_input(x)], request_id="open")
    check(answered.wait(60), "the stream was not answered")
    try:
        y = c.infer("tiny", [raw_input(x)], client_timeout=2.0).as_numpy("OUTPUT__0")
        close(y, expected, "unary call while the stream is open")
        got = "answered"
    except InferenceServerException as e:
        check(e.status() == "StatusCode.DEADLINE_EXCEEDED", f"unary call while the stream is open: {e.status()} {e.message()}")
        got = "waits"
    check(got == expect, f"the unary call {got}, expected it {expect}")
    print(f"while_stream_open={got}")
    c.stop_stream()
    close(c.infer("tiny", [raw_input(x)]).as_numpy("OUTPUT__0"), expected, "unary call after the stream")
    print("after_stream=answered")


def shm_symlink(url, x_path, expected_path):
    """A shared memory key that is a symbolic link (anyone can plant one in
    /dev/shm) is refused at registration, and the file it points to is untouched."""
    import os
    import tempfile

    x, expected = np.load(x_path), np.load(expected_path)
    c = tg.InferenceServerClient(url)
    tag = f"uminfer-oip-link-{os.getpid()}"
    fd, target = tempfile.mkstemp(prefix=tag)
    before = bytes([0xA5]) * expected.nbytes
    os.write(fd, before)
    os.close(fd)
    link = f"/dev/shm/{tag}"
    os.symlink(target, link)
    try:
        expect_error("symlink_refused", grpc.StatusCode.INVALID_ARGUMENT, "is a symbolic link",
                     lambda: c.register_system_shared_memory("linked", f"/{tag}", expected.nbytes))
        # Had it been accepted, this request would write its output into the target.
        o = tg.InferRequestedOutput("OUTPUT__0")
        o.set_shared_memory("linked", expected.nbytes)
        try:
            c.infer("tiny", [raw_input(x)], outputs=[o])
        except InferenceServerException:
            pass
        with open(target, "rb") as f:
            check(f.read() == before, "the symlink's target was written")
        print("target_untouched=ok")
        close(c.infer("tiny", [raw_input(x)]).as_numpy("OUTPUT__0"), expected, "a request after the refusal")
        print("after=ok")
    finally:
        os.unlink(link)
        os.unlink(target)


def shm_truncated(url, x_path, expected_path):
    """A client truncates its registered objects (input, then output) after a
    good request: the next request fails with FAILED_PRECONDITION naming the
    region, the region is refused until registered again, other requests are
    answered, and re-registering the re-sized object works."""
    import os
    import tritonclient.utils.shared_memory as shm

    x, expected = np.load(x_path), np.load(expected_path)
    nx, ny = x.nbytes, expected.nbytes
    c = tg.InferenceServerClient(url)
    tag = f"uminfer-oip-trunc-{os.getpid()}"
    hin = shm.create_shared_memory_region("in", f"/{tag}-in", nx)
    hout = shm.create_shared_memory_region("out", f"/{tag}-out", ny)
    SC = grpc.StatusCode

    def run():
        i = tg.InferInput("INPUT__0", list(x.shape), "FP32").set_shared_memory("in", nx)
        o = tg.InferRequestedOutput("OUTPUT__0")
        o.set_shared_memory("out", ny)
        r = c.infer("tiny", [i], outputs=[o])
        return shm.get_contents_as_numpy(hout, np.float32, list(r.get_output("OUTPUT__0").shape))

    def reregister(which, n):
        os.truncate(f"/dev/shm/{tag}-{which}", n)
        c.unregister_system_shared_memory(which)
        c.register_system_shared_memory(which, f"/{tag}-{which}", n)

    try:
        c.register_system_shared_memory("in", f"/{tag}-in", nx)
        c.register_system_shared_memory("out", f"/{tag}-out", ny)
        shm.set_shared_memory_region(hin, [x])
        close(run(), expected, "before truncating")
        print("before=ok")
        os.truncate(f"/dev/shm/{tag}-in", 0)
        expect_error("input_truncated", SC.FAILED_PRECONDITION, 'region "in" was truncated by its owner during the request', run)
        expect_error("input_refused", SC.FAILED_PRECONDITION, "unregister it and register it again", run)
        close(c.infer("tiny", [raw_input(x)]).as_numpy("OUTPUT__0"), expected, "another request after the truncation")
        print("other_request=ok")
        # The client's own mapping of the object is gone with it: write again once re-sized.
        reregister("in", nx)
        shm.set_shared_memory_region(hin, [x])
        close(run(), expected, "after re-registering the input")
        print("input_reregistered=ok")
        os.truncate(f"/dev/shm/{tag}-out", 0)
        expect_error("output_truncated", SC.FAILED_PRECONDITION, 'region "out" was truncated by its owner during the request', run)
        reregister("out", ny)
        close(run(), expected, "after re-registering the output")
        print("output_reregistered=ok")
    finally:
        shm.destroy_shared_memory_region(hin)
        shm.destroy_shared_memory_region(hout)


def shm_limits(url, x_path, expected_path, max_regions, max_bytes):
    """Registrations beyond the server's bounds (--max-shm-regions,
    --max-shm-bytes) are refused with RESOURCE_EXHAUSTED naming the flag;
    unregistering makes room again, and requests go on being answered."""
    import os
    import tritonclient.utils.shared_memory as shm

    x, expected = np.load(x_path), np.load(expected_path)
    max_regions, max_bytes = int(max_regions), int(max_bytes)
    c = tg.InferenceServerClient(url)
    tag = f"uminfer-oip-limits-{os.getpid()}"
    h = shm.create_shared_memory_region("r", f"/{tag}", 64)
    SC = grpc.StatusCode
    try:
        # One object registered under many names, 64 bytes each.
        for k in range(max_regions):
            c.register_system_shared_memory(f"r{k}", f"/{tag}", 64)
        print(f"registered={max_regions}")
        expect_error("beyond_regions", SC.RESOURCE_EXHAUSTED, "--max-shm-regions", lambda: c.register_system_shared_memory("extra", f"/{tag}", 64))
        c.unregister_system_shared_memory("r0")
        c.register_system_shared_memory("again", f"/{tag}", 64)
        print("after_unregister=ok")
        c.unregister_system_shared_memory()
        if max_bytes < 1 << 20:
            big = shm.create_shared_memory_region("big", f"/{tag}-big", max_bytes + 64)
            try:
                c.register_system_shared_memory("small", f"/{tag}", 64)
                expect_error("beyond_bytes", SC.RESOURCE_EXHAUSTED, "--max-shm-bytes",
                             lambda: c.register_system_shared_memory("big", f"/{tag}-big", max_bytes))
                c.unregister_system_shared_memory("small")
                c.register_system_shared_memory("big", f"/{tag}-big", max_bytes)
                print("bytes_within_bound=ok")
            finally:
                c.unregister_system_shared_memory()
                shm.destroy_shared_memory_region(big)
        close(c.infer("tiny", [raw_input(x)]).as_numpy("OUTPUT__0"), expected, "a request after the refusals")
        print("after=ok")
    finally:
        c.unregister_system_shared_memory()
        shm.destroy_shared_memory_region(h)


if __name__ == "__main__":
    mode, url, *args = sys.argv[1:]
    {"health": lambda: health(url, args), "infer": lambda: infer(url, *args), "errors": lambda: errors(url, *args),
     "stream": lambda: stream(url, *args), "shm": lambda: system_shm(url, *args),
     "shm_symlink": lambda: shm_symlink(url, *args), "shm_truncated": lambda: shm_truncated(url, *args),
     "shm_limits": lambda: shm_limits(url, *args),
     "drain": lambda: drain(url, args[0], args[1], int(args[2]), *args[3:]), "count": lambda: count(url, *args),
     "bounded": lambda: bounded(url, *args), "stats": lambda: stats(url, *args), "admission": lambda: admission(url, *args), "shapes": lambda: shapes(url, *args), "busy": lambda: busy(url, *args),
     "unregister_in_flight": lambda: unregister_in_flight(url, args[0], args[1], int(args[2]))}[mode]()
