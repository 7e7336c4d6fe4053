"""uminfer bench peer: Python's own ways of running the same model, driven one request at a time
by `uminfer bench` so that schemes are interleaved.

  python peer.py --model PATH --mode {torchscript,cuda-graph,onnxruntime} --device DEV
                 --inputs-json JSON [--warmup N]

--inputs-json lists the model's inputs in order:
  [{"name": "input_ids", "dtype": "int64", "shape": [1, 32], "range": [0, 1000]}, ...]
with dtype one of float32 float64 float16 bfloat16 int64 int32 int16 int8 uint8 bool, and range
(integers and bools; [low, high), default [0, 2)) null or absent. --warmup: requests run before
`ready` (default 20; cuda-graph also runs that many forwards, at least 3, before its capture).

Protocol (lines on stdout / stdin):
  -> ready <intra-op threads> <device>
     or: unavailable <reason>, then exit 0, when this mode cannot run this model
  <- check IN.npz OUT.npz  -> ok      one request on IN's arrays (keyed by input name; bfloat16 as
                                      float32), every output written to OUT keyed by its flattened
                                      name (bfloat16 as float32)
  <- run SEED              -> t <ns>  fresh inputs from np.random.default_rng(SEED), untimed (floats
                                      uniform in [0, 1) of their dtype, integers and bools uniform in
                                      their range); then one request timed from inputs in host memory
                                      to every output readable in host memory as NumPy arrays
  <- quit
Any other failure: a traceback on stderr and a non-zero exit.

Flattened output names (uminfer's): a lone tensor is output__0; the elements of a top-level tuple or
list output__0, output__1, ...; a top-level dict's, its keys; nested containers join with '.'
(output__1.0, output__2.KEY), in order.

Modes (all over host buffers preallocated per input and, where the mode allows, per output):
  torchscript  torch.jit.load on the device, eager forward under inference_mode, outputs copied
               out to NumPy
  cuda-graph   pinned host buffers, static device inputs, torch.cuda.CUDAGraph captured after a
               warm-up on a side stream; per request: copy each input in, replay, copy each output
               out, synchronise
  onnxruntime  the model exported to ONNX here (TorchScript exporter), run by an ONNX Runtime CPU
               session with torch's intra-op threads (not spinning between runs), one inter-op
               thread, sequential execution; inputs and outputs bound once (IoBinding) over the host buffers; per request:
               run_with_iobinding
"""
import argparse
import functools
import json
import os
import sys
import tempfile
import time
import warnings
from typing import Callable, List, NamedTuple, Optional, Tuple

import numpy as np
import torch

# Per dtype (the protocol names them as torch does): the NumPy dtype of its host arrays (NumPy has
# no bfloat16: a bfloat16 tensor's array holds its bits) and its ONNX element type (onnx.TensorProto).
HOST = {
    torch.float32: (np.float32, 1),
    torch.float64: (np.float64, 11),
    torch.float16: (np.float16, 10),
    torch.bfloat16: (np.uint16, 16),
    torch.int64: (np.int64, 7),
    torch.int32: (np.int32, 6),
    torch.int16: (np.int16, 5),
    torch.int8: (np.int8, 3),
    torch.uint8: (np.uint8, 2),
    torch.bool: (np.bool_, 9),
}


class Unavailable(Exception):
    """This mode cannot run this model: the peer says why and exits 0."""


def reason(e: BaseException) -> str:
    """One line: the exception's type and the first line of its message."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0] if lines else ''}".strip()


class Input(NamedTuple):
    name: str
    dtype: torch.dtype
    shape: Tuple[int, ...]
    range: Tuple[int, int]


def parse_inputs(text: str) -> List[Input]:
    specs = []
    for i in json.loads(text):
        dtype = getattr(torch, i["dtype"], None)
        if dtype not in HOST:
            raise ValueError(f"input {i['name']}: unknown dtype {i['dtype']!r}")
        specs.append(Input(i["name"], dtype, tuple(i["shape"]), tuple(i.get("range") or (0, 2))))
    return specs


def draw(rng: np.random.Generator, spec: Input) -> torch.Tensor:
    """A fresh input: floats uniform over their dtype's grid in [0, 1) (as rng.random draws),
    integers and bools uniform in [low, high)."""
    if spec.dtype.is_floating_point:
        bits = 1 - int(np.log2(torch.finfo(spec.dtype).eps))  # mantissa bits
        a = rng.integers(0, 1 << bits, size=spec.shape) * 2.0**-bits
    else:
        a = rng.integers(*spec.range, size=spec.shape, dtype=HOST[spec.dtype][0])
    return torch.from_numpy(a).to(spec.dtype)


def flatten(out, prefix: Optional[str] = None) -> List[Tuple[str, torch.Tensor]]:
    """(name, tensor) pairs of an output, named as uminfer flattens them (see the docstring)."""
    if isinstance(out, torch.Tensor):
        return [(prefix if prefix is not None else "output__0", out)]
    if isinstance(out, (tuple, list)):
        items = [(f"output__{i}" if prefix is None else f"{prefix}.{i}", v) for i, v in enumerate(out)]
    elif isinstance(out, dict):
        items = [(str(k) if prefix is None else f"{prefix}.{k}", v) for k, v in out.items()]
    else:
        raise TypeError(f"cannot flatten an output of type {type(out).__name__}")
    return [kv for name, v in items for kv in flatten(v, name)]


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """A host tensor's NumPy view (a bfloat16 one's bits)."""
    return t.view(torch.uint16).numpy() if t.dtype == torch.bfloat16 else t.numpy()


def bf16_bits_to_float32(a: np.ndarray) -> np.ndarray:
    return (a.astype(np.uint32) << 16).view(np.float32)


def torchscript(model, host_in: List[torch.Tensor], dev: torch.device) -> Callable[[], List[np.ndarray]]:
    def request() -> List[np.ndarray]:
        out = model(*(t.to(dev) for t in host_in))
        return [to_numpy(t.to("cpu")).copy() for _, t in flatten(out)]

    return request


def cuda_graph(model, host_in: List[torch.Tensor], dev: torch.device, warmup: int) -> Callable[[], List[np.ndarray]]:
    static_in = [t.to(dev) for t in host_in]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(max(3, warmup)):
            model(*static_in)
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            static_out = [t for _, t in flatten(model(*static_in))]
    except RuntimeError as e:
        raise Unavailable(f"CUDA graph capture failed: {reason(e)}") from e
    host_out = [torch.empty(t.shape, dtype=t.dtype).pin_memory() for t in static_out]

    def request() -> List[np.ndarray]:
        for s, h in zip(static_in, host_in):
            s.copy_(h, non_blocking=True)
        graph.replay()
        for h, s in zip(host_out, static_out):
            h.copy_(s, non_blocking=True)
        torch.cuda.synchronize()
        return [to_numpy(h).copy() for h in host_out]

    return request


class Flat(torch.nn.Module):
    """The model with its outputs flattened into a tuple of tensors, for the tracer."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, *inputs):
        return tuple(t for _, t in flatten(self.model(*inputs)))


def fold_dicts(graph) -> None:
    """The TorchScript ONNX exporter has no dicts: in the graph's top block, resolve d[k] to the
    value last stored under the constant key k when d is built there by prim::DictConstruct and
    aten::_set_item alone. Any other dict is left to the exporter (which refuses it)."""
    in_order = functools.cmp_to_key(lambda a, b: -1 if a.isBefore(b) else 1)
    for d in [n for n in graph.nodes() if n.kind() == "prim::DictConstruct"]:
        uses = [u.user for u in d.output().uses()]
        if not all(
            u.kind() in ("aten::_set_item", "aten::__getitem__")
            and u.owningBlock().owningNode() is None
            and u.inputsAt(1).node().kind() == "prim::Constant"
            for u in uses
        ):
            continue
        kv = list(d.inputs())
        entries = {k.toIValue(): v for k, v in zip(kv[::2], kv[1::2])}
        for u in sorted(uses, key=in_order):
            key = u.inputsAt(1).toIValue()
            if u.kind() == "aten::_set_item":
                entries[key] = u.inputsAt(2)
            else:
                u.output().replaceAllUsesWith(entries[key])
            u.destroy()
        d.destroy()


def onnxruntime(model, host_in: List[torch.Tensor], specs: List[Input], sample) -> Callable[[], List[np.ndarray]]:
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise Unavailable(f"onnxruntime is not installed ({reason(e)})") from e
    names = [name for name, _ in sample]
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # errors only
    # No spinning between runs: ONNX Runtime's intra-op threads otherwise
    # spin on the cores after each request and take them from the scheme
    # whose turn comes next in the interleaved bench (beside this peer,
    # cpu-zero-copy's P99 on the encoder went from ~0.6 ms to ~4 ms on 2
    # cores); it costs this peer a little of its own latency.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(Flat(model), tuple(host_in), check_trace=False)
            torch._C._jit_pass_inline(traced.graph)
            fold_dicts(traced.graph)
            path = os.path.join(tmp, "model.onnx")
            torch.onnx.export(
                traced,
                tuple(host_in),
                path,
                input_names=[s.name for s in specs],
                output_names=names,
                opset_version=17,
                dynamo=False,
            )
            session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise Unavailable(reason(e)) from e

    def bound(t: torch.Tensor):
        """An OrtValue over the host tensor's memory (its bits, for bfloat16)."""
        return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(to_numpy(t), HOST[t.dtype][1])

    host_out = [torch.empty(t.shape, dtype=t.dtype) for _, t in sample]
    binding = session.io_binding()
    by_name = dict(zip((s.name for s in specs), host_in))
    for i in session.get_inputs():  # the exporter drops inputs the model does not use
        binding.bind_ortvalue_input(i.name, bound(by_name[i.name]))
    for name, t in zip(names, host_out):
        binding.bind_ortvalue_output(name, bound(t))
    outputs = [to_numpy(t) for t in host_out]

    def request() -> List[np.ndarray]:
        session.run_with_iobinding(binding)
        return outputs

    return request


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--mode", choices=["torchscript", "cuda-graph", "onnxruntime"], required=True)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--inputs-json", required=True)
    ap.add_argument("--warmup", type=int, default=20)
    a = ap.parse_args()
    specs = parse_inputs(a.inputs_json)

    # The protocol has stdout to itself: anything else written there (the ONNX exporter's C++ log,
    # stray prints) goes to stderr.
    proto = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)

    def say(line: str) -> None:
        print(line, file=proto, flush=True)

    dev = torch.device(a.device)
    try:
        if a.mode == "cuda-graph" and not torch.cuda.is_available():
            raise Unavailable("no CUDA device (torch.cuda.is_available() is false)")
        if a.mode == "cuda-graph" and dev.type != "cuda":
            raise Unavailable(f"cuda-graph needs a CUDA device, not {dev}")
        if a.mode == "onnxruntime" and dev.type != "cpu":
            raise Unavailable("onnxruntime peer runs on the CPU provider only")
        model = torch.jit.load(a.model, map_location=dev).eval()
        host_in = [torch.zeros(s.shape, dtype=s.dtype) for s in specs]
        if a.mode == "cuda-graph":
            host_in = [t.pin_memory() for t in host_in]
        rng = np.random.default_rng(0)
        for t, s in zip(host_in, specs):
            t.copy_(draw(rng, s))
        with torch.inference_mode():
            sample = [(name, t.to("cpu")) for name, t in flatten(model(*(t.to(dev) for t in host_in)))]
            if a.mode == "torchscript":
                request = torchscript(model, host_in, dev)
            elif a.mode == "cuda-graph":
                request = cuda_graph(model, host_in, dev, a.warmup)
            else:
                request = onnxruntime(model, host_in, specs, sample)
    except Unavailable as e:
        say(f"unavailable {' '.join(str(e).split())}")
        return
    names = [name for name, _ in sample]
    bf16 = [t.dtype == torch.bfloat16 for _, t in sample]

    with torch.inference_mode():
        for _ in range(a.warmup):
            request()
        say(f"ready {torch.get_num_threads()} {dev}")
        for line in sys.stdin:
            cmd = line.split()
            if not cmd:
                continue
            if cmd[0] == "quit":
                break
            if cmd[0] == "check":
                with np.load(cmd[1]) as arrays:
                    for t, s in zip(host_in, specs):
                        t.copy_(torch.from_numpy(np.ascontiguousarray(arrays[s.name])).to(s.dtype))
                outs = request()
                with open(cmd[2], "wb") as f:  # open: np.savez would append .npz to a bare path
                    np.savez(f, **{n: bf16_bits_to_float32(o) if b else o for n, o, b in zip(names, outs, bf16)})
                say("ok")
            elif cmd[0] == "run":
                rng = np.random.default_rng(int(cmd[1]))
                for t, s in zip(host_in, specs):
                    t.copy_(draw(rng, s))
                t0 = time.perf_counter_ns()
                request()
                t1 = time.perf_counter_ns()
                say(f"t {t1 - t0}")
            else:
                raise ValueError(f"unknown command {line.strip()!r}")


if __name__ == "__main__":
    main()
