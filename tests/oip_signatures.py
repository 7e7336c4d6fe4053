"""Models of any signature through the Open Inference Protocol endpoint, driven
by Triton's own clients (tritonclient[grpc] and tritonclient[http]), as
tests/oip_python.rs runs them: the encoder (two INT64 inputs, a tuple of two
outputs), the dict-output model and the model of every datatype, each answer
equal to PyTorch's (models/NAME.expected.npz); output selection and order;
system shared memory per tensor; and every refusal, the server serving on.

Usage: oip_signatures.py grpc|http URL MODELS_DIR
Prints KEY=ok lines; exits 1 with FAILED: ... on the first wrong answer.
"""
import sys

import ml_dtypes
import numpy as np

mode, url, models = sys.argv[1], sys.argv[2], sys.argv[3]
if mode == "grpc":
    import tritonclient.grpc as tc
else:
    import tritonclient.http as tc
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException

client = tc.InferenceServerClient(url)


def fail(msg):
    print(f"FAILED: {msg}", flush=True)
    sys.exit(1)


def check(ok, msg):
    if not ok:
        fail(msg)


def reference(name):
    """The model's inputs (by name, bf16 as ml_dtypes.bfloat16) and PyTorch's outputs (bf16 stored as float32)."""
    inputs = dict(np.load(f"{models}/{name}.inputs.npz"))
    if "a_bf16" in inputs:
        inputs["a_bf16"] = inputs["a_bf16"].astype(ml_dtypes.bfloat16)
    return inputs, dict(np.load(f"{models}/{name}.expected.npz"))


def datatype(a):
    return "BF16" if a.dtype == ml_dtypes.bfloat16 else tc.np_to_triton_dtype(a.dtype)


def infer_input(name, a, binary=True):
    i = tc.InferInput(name, list(a.shape), datatype(a))
    if mode == "http":
        # tritonclient sends BF16 as binary data only (JSON data beside it is fine).
        i.set_data_from_numpy(a, binary_data=binary or datatype(a) == "BF16")
    else:
        i.set_data_from_numpy(a)
    return i


def requested(name, binary=True):
    return tc.InferRequestedOutput(name, binary_data=binary) if mode == "http" else tc.InferRequestedOutput(name)


def same(got, want, what):
    check(got is not None, f"{what}: no output")
    got = got.astype(np.float32) if got.dtype == ml_dtypes.bfloat16 else got
    check(got.shape == want.shape and got.dtype == want.dtype, f"{what}: {got.dtype} {got.shape}, expected {want.dtype} {want.shape}")
    if want.dtype.kind == "f":
        err = float(np.max(np.abs(got.astype(np.float64) - want)) / max(1e-12, float(np.max(np.abs(want)))))
        check(err <= 1e-5, f"{what}: relative error {err}")
    else:
        check(np.array_equal(got, want), f"{what}: {got} != {want}")


def answers_equal_pytorch():
    for name in ("encoder", "heads", "dtypes"):
        inputs, expected = reference(name)
        meta = client.get_model_metadata(name) if mode == "http" else client.get_model_metadata(name, as_json=True)
        got = [(t["name"], t["datatype"]) for t in meta["inputs"]]
        check(got == [(k, datatype(v)) for k, v in inputs.items()], f"{name} metadata inputs {got}")
        check([t["name"] for t in meta["outputs"]] == list(expected), f"{name} metadata outputs {meta['outputs']}")
        for binary in ((True, False) if mode == "http" else (True,)):
            r = client.infer(name, [infer_input(k, v, binary) for k, v in inputs.items()])
            for k, want in expected.items():
                same(r.as_numpy(k), want, f"{name} {k} ({'binary' if binary else 'json'})")
        # Output selection: the last two outputs, in reverse order, named as asked.
        chosen = list(expected)[::-1][:2]
        r = client.infer(name, [infer_input(k, v) for k, v in inputs.items()], outputs=[requested(k) for k in chosen])
        outs = r.get_response(as_json=True)["outputs"] if mode == "grpc" else r.get_response()["outputs"]
        check([o["name"] for o in outs] == chosen, f"{name}: outputs {[o['name'] for o in outs]}, asked {chosen}")
        for k in chosen:
            same(r.as_numpy(k), expected[k], f"{name} {k} (selected)")
        print(f"{name}=ok", flush=True)


def shared_memory_per_tensor():
    name = "encoder"
    inputs, expected = reference(name)
    handles = []
    try:
        for k, v in inputs.items():
            h = shm.create_shared_memory_region(f"in-{k}", f"/uminfer-sig-{k}", v.nbytes)
            shm.set_shared_memory_region(h, [v])
            client.register_system_shared_memory(f"in-{k}", f"/uminfer-sig-{k}", v.nbytes)
            handles.append(h)
        out0 = expected["output__0"]
        h = shm.create_shared_memory_region("out0", "/uminfer-sig-out0", out0.nbytes)
        client.register_system_shared_memory("out0", "/uminfer-sig-out0", out0.nbytes)
        handles.append(h)
        ins = []
        for k, v in inputs.items():
            i = tc.InferInput(k, list(v.shape), datatype(v))
            i.set_shared_memory(f"in-{k}", v.nbytes)
            ins.append(i)
        o0 = requested("output__0")
        o0.set_shared_memory("out0", out0.nbytes)
        r = client.infer(name, ins, outputs=[o0, requested("output__1")])
        same(shm.get_contents_as_numpy(h, np.float32, list(out0.shape)), out0, "output__0 in shared memory")
        same(r.as_numpy("output__1"), expected["output__1"], "output__1 in the response beside it")
        # A region too small for one tensor of several.
        small = requested("output__0")
        small.set_shared_memory("out0", out0.nbytes - 4)
        refused("region_too_small", lambda: client.infer(name, ins, outputs=[small, requested("output__1")]), f"gives {out0.nbytes - 4} bytes of shared memory")
        # An output over an input's bytes.
        over = requested("output__1")
        over.set_shared_memory("in-input_ids", 64 * 4)
        refused("output_over_input", lambda: client.infer(name, ins, outputs=[over]), 'output "output__1" overlaps input "input_ids"')
        print("shm=ok", flush=True)
    finally:
        for k in list(inputs) + ["out0"]:
            try:
                client.unregister_system_shared_memory(f"in-{k}" if k != "out0" else k)
            except InferenceServerException:
                pass
        for h in handles:
            shm.destroy_shared_memory_region(h)


def refused(label, call, needle):
    try:
        call()
    except InferenceServerException as e:
        msg = e.message()
        bad = "StatusCode.INVALID_ARGUMENT" if mode == "grpc" else "400"
        check(str(e.status()) == bad and needle in msg, f"{label}: {e.status()} {msg!r}, expected {bad} containing {needle!r}")
    else:
        fail(f"{label}: no error")
    # The server keeps serving: a good request right after each bad one.
    inputs, expected = reference("encoder")
    r = client.infer("encoder", [infer_input(k, v) for k, v in inputs.items()])
    same(r.as_numpy("output__1"), expected["output__1"], f"good request after {label}")
    print(f"{label}=refused", flush=True)


def refusals():
    inputs, _ = reference("encoder")
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    refused("unknown_tensor", lambda: client.infer("encoder", [infer_input("input_ids", ids), infer_input("token_type_ids", mask)]), 'has no input "token_type_ids"')
    refused("missing_input", lambda: client.infer("encoder", [infer_input("input_ids", ids)]), 'missing input "attention_mask"')
    refused("duplicate_input", lambda: client.infer("encoder", [infer_input("input_ids", ids), infer_input("INPUT__0", ids), infer_input("attention_mask", mask)]), 'input "input_ids" is given twice')
    refused("wrong_datatype", lambda: client.infer("encoder", [infer_input("input_ids", ids.astype(np.int32)), infer_input("attention_mask", mask)]), 'has datatype INT32; input "input_ids" is INT64')
    refused("wrong_shape", lambda: client.infer("encoder", [infer_input("input_ids", ids[:, :16]), infer_input("attention_mask", mask)]), 'has shape [1, 16]')
    refused("unknown_output", lambda: client.infer("encoder", [infer_input("input_ids", ids), infer_input("attention_mask", mask)], outputs=[requested("logits")]), 'has no output "logits"')
    print("refusals=ok", flush=True)


answers_equal_pytorch()
shared_memory_per_tensor()
refusals()
print("done=ok", flush=True)
