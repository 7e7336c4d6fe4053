"""Drives the REST/JSON form of `uminfer serve --grpc ... --http ADDR` with
Triton's own, unmodified HTTP client (tritonclient[http], pinned in
ci/requirements.txt) for tests/oip_python.rs.

    python tests/oip_http_client.py URL TINY_IN TINY_EXPECTED RESNET_IN RESNET_EXPECTED

Prints `key=value` lines on stdout and exits non-zero on any mismatch:
health and metadata; inference of both models with binary tensor data (the
client's default) and with JSON data both ways, equal to PyTorch's result;
system shared memory inputs and outputs; every refusal a clear HTTP status
with the server still serving. Malformed bodies, which the client never
sends, go through urllib.
"""
import json
import os
import sys
import urllib.error
import urllib.request

import numpy as np
import tritonclient.http as th
import tritonclient.utils.shared_memory as shm

from oip_checks import SHAPE, check, close, expect_error


def post(url, path, body, headers=None):
    """(HTTP status, body) of a raw POST."""
    req = urllib.request.Request(f"http://{url}{path}", data=body, headers=headers or {}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def request(x, binary, out_binary, name="INPUT__0", datatype="FP32"):
    i = th.InferInput(name, list(x.shape), datatype)
    i.set_data_from_numpy(x, binary_data=binary)
    return [i], [th.InferRequestedOutput("OUTPUT__0", binary_data=out_binary)]


def health_and_metadata(c):
    check(c.is_server_live(), "server not live")
    check(c.is_server_ready(), "server not ready")
    check(c.is_model_ready("tiny") and c.is_model_ready("resnet18"), "models not ready")
    check(not c.is_model_ready("no-such-model"), "unknown model reported ready")
    meta = c.get_server_metadata()
    check(meta["name"] == "uminfer" and "binary_tensor_data" in meta["extensions"], f"server metadata {meta}")
    for name, out in (("tiny", [1, 10]), ("resnet18", [1, 1000])):
        m = c.get_model_metadata(name)
        got = (m["name"], m["versions"], m["platform"], m["inputs"], m["outputs"])
        want = (name, ["1"], "pytorch_libtorch", [{"name": "x", "datatype": "FP32", "shape": SHAPE}],
                [{"name": "output__0", "datatype": "FP32", "shape": out}])
        check(got == want, f"metadata of {name}: {got}, expected {want}")
        check(c.get_model_metadata(name, model_version="1")["name"] == name, f"metadata of {name} version 1")
        cfg = c.get_model_config(name)
        got = (cfg["name"], cfg["platform"], cfg["max_batch_size"], cfg["input"], cfg["output"], cfg["instance_group"])
        want = (name, "pytorch_libtorch", 0, [{"name": "x", "data_type": "TYPE_FP32", "dims": SHAPE}],
                [{"name": "output__0", "data_type": "TYPE_FP32", "dims": out}], [{"name": name, "kind": "KIND_CPU", "count": 1}])
        check(got == want, f"config of {name}: {got}, expected {want}")
    index = sorted((m["name"], m["version"], m["state"]) for m in c.get_model_repository_index())
    check(index == [("resnet18", "1", "READY"), ("tiny", "1", "READY")], f"repository index {index}")
    print("health=ok")


def infer_all_ways(c, name, x, expected):
    for binary in (True, False):
        for out_binary in (True, False):
            inputs, outputs = request(x, binary, out_binary)
            r = c.infer(name, inputs, outputs=outputs, request_id=f"{name}-{binary}-{out_binary}")
            check(r.get_response()["id"] == f"{name}-{binary}-{out_binary}", f"response id {r.get_response()}")
            wire = "binary" if out_binary else "json"
            check(("binary_data_size" in r.get_output("OUTPUT__0").get("parameters", {})) == out_binary,
                  f"{name}: output asked as {wire}, got {r.get_output('OUTPUT__0')}")
            diff = close(r.as_numpy("OUTPUT__0"), expected, f"{name} input {'binary' if binary else 'json'} output {wire}")
            print(f"{name}_in_{'binary' if binary else 'json'}_out_{wire}_diff={diff}")
    # No outputs named: the client asks for all of them in binary form.
    inputs, _ = request(x, True, True)
    close(c.infer(name, inputs).as_numpy("OUTPUT__0"), expected, f"{name} with every output")


def system_shm(c, x, expected):
    nx, ny = x.nbytes, expected.nbytes
    tag = f"uminfer-oip-http-{os.getpid()}"
    c.unregister_system_shared_memory()
    hin = shm.create_shared_memory_region("in", f"/{tag}-in", nx)
    hout = shm.create_shared_memory_region("out", f"/{tag}-out", ny)
    try:
        c.register_system_shared_memory("in", f"/{tag}-in", nx)
        c.register_system_shared_memory("out", f"/{tag}-out", ny)
        status = c.get_system_shared_memory_status()
        check(sorted(r["name"] for r in status) == ["in", "out"], f"status {status}")
        check(c.get_system_shared_memory_status("in")[0]["byte_size"] == nx, f"status of in {c.get_system_shared_memory_status('in')}")
        shm.set_shared_memory_region(hin, [x])
        i = th.InferInput("INPUT__0", list(x.shape), "FP32")
        i.set_shared_memory("in", nx)
        o = th.InferRequestedOutput("OUTPUT__0", binary_data=True)
        o.set_shared_memory("out", ny)
        r = c.infer("tiny", [i], outputs=[o])
        out = r.get_output("OUTPUT__0")
        check("data" not in out and out.get("parameters", {}).get("shared_memory_region") == "out",
              f"an output written to shared memory is answered with its region and no data: {out}")
        close(shm.get_contents_as_numpy(hout, np.float32, expected.shape), expected, "shared memory input and output")
        expect_error("register_twice", 409, "already registered", lambda: c.register_system_shared_memory("in", f"/{tag}-in", nx))
        expect_error("register_missing_key", 400, "cannot open", lambda: c.register_system_shared_memory("nokey", f"/{tag}-none", 8))
        o.set_shared_memory("out", ny - 4)
        expect_error("output_region_too_small", 400, f"needs {ny}", lambda: c.infer("tiny", [i], outputs=[o]))
        c.unregister_system_shared_memory("in")
        check([r["name"] for r in c.get_system_shared_memory_status()] == ["out"], "in still registered")
        expect_error("unregistered_region", 400, "is not registered", lambda: c.infer("tiny", [i]))
        expect_error("status_of_unregistered", 404, "no shared memory region", lambda: c.get_system_shared_memory_status("in"))
        c.unregister_system_shared_memory()
        check(c.get_system_shared_memory_status() == [], "regions left after unregistering all")
        print("shm=ok")
    finally:
        shm.destroy_shared_memory_region(hin)
        shm.destroy_shared_memory_region(hout)


def errors(c, url, x, expected):
    inputs, outputs = request(x, True, True)
    expect_error("unknown_model", 404, "no model named", lambda: c.infer("nope", inputs, outputs=outputs))
    expect_error("wrong_shape", 400, "shape", lambda: c.infer("tiny", request(x[:, :2].copy(), True, True)[0]))
    expect_error("wrong_dtype", 400, "FP64", lambda: c.infer("tiny", request(x.astype(np.float64), True, True, datatype="FP64")[0], outputs=outputs))
    expect_error("wrong_dtype_json", 400, "INT32", lambda: c.infer("tiny", request(x.astype(np.int32), False, True, datatype="INT32")[0]))
    expect_error("wrong_input_name", 400, 'has no input "input"; model "tiny" takes "x"', lambda: c.infer("tiny", request(x, True, True, name="input")[0]))
    status, body = post(url, "/v2/models/tiny/infer", b"{not json")
    check(status == 400 and "does not parse" in json.loads(body)["error"], f"malformed JSON: {status} {body!r}")
    print("malformed_json=400")
    status, body = post(url, "/v2/models/tiny/infer", b"{}", {"Inference-Header-Content-Length": "99"})
    check(status == 400 and "only 2 bytes" in json.loads(body)["error"], f"header length past the body: {status} {body!r}")
    print("header_length_past_body=400")
    status, body = post(url, "/v2/models/tiny/infer", b"{}", {"Content-Encoding": "gzip"})
    check(status == 415 and "uncompressed" in json.loads(body)["error"], f"compressed body: {status} {body!r}")
    print("compressed=415")
    status, body = post(url, "/v2/nowhere", b"")
    check(status == 404 and "/v2" in json.loads(body)["error"], f"unknown route: {status} {body!r}")
    print("unknown_route=404")
    # Still serving after every refusal.
    close(c.infer("tiny", inputs, outputs=outputs).as_numpy("OUTPUT__0"), expected, "a request after the refusals")
    print("errors=ok")


def statistics(c):
    """Prints each model's ModelStatistics counts, checked against the
    statistics of every model at once."""
    every = {m["name"]: m for m in c.get_inference_statistics()["model_stats"]}
    check(sorted(every) == ["resnet18", "tiny"], f"statistics of every model: {sorted(every)}")
    for name in ("tiny", "resnet18"):
        (m,) = c.get_inference_statistics(name)["model_stats"]
        check(m == every[name], f"statistics of {name} alone and among all differ: {m} {every[name]}")
        i = m["inference_stats"]
        check(i["compute_infer"]["ns"] > 0 and i["success"]["ns"] >= i["compute_infer"]["ns"], f"{name} times {i}")
        print(f"stats_{name}=inference_count {m['inference_count']} success {i['success']['count']} fail {i['fail']['count']} "
              f"compute_infer {i['compute_infer']['count']}")
    expect_error("stats_unknown_model", 404, "no model named", lambda: c.get_inference_statistics("nope"))


if __name__ == "__main__":
    url, tiny_x, tiny_y, resnet_x, resnet_y = sys.argv[1:]
    tiny = np.load(tiny_x), np.load(tiny_y)
    resnet = np.load(resnet_x), np.load(resnet_y)
    c = th.InferenceServerClient(url)
    health_and_metadata(c)
    infer_all_ways(c, "tiny", *tiny)
    infer_all_ways(c, "resnet18", *resnet)
    system_shm(c, *tiny)
    errors(c, url, *tiny)
    statistics(c)
    print("http=ok")
