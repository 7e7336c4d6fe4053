#!/usr/bin/env python3
"""Export the reference workloads used by uminfer's tests and benchmarks.

TorchScript models (torch.jit.script), each with a reference pair computed here by PyTorch itself
(eval mode, CPU, no grad) so that the Rust side checks its results against PyTorch's, not itself:
  tiny.pt        a small CNN (two strided convolutions, pooling, a linear layer; 10 classes)
  resnet18.pt    the standard ResNet-18 topology (BasicBlock, [2, 2, 2, 2], 1000 classes), random weights
  identity.pt    returns a copy of its input (its hint's shape is a default: it is served at many shapes)
  noisy.pt       draws random numbers in forward (no signature hint)
    NAME.input.npy / NAME.expected.npy   input 1x3x128x128 float32 and the output (float32)
  encoder.pt     a small BERT-like encoder: (input_ids, attention_mask) int64 [1, 32] ->
                 (hidden_states [1, 32, 64], pooled [1, 64])
  heads.pt       features float32 [1, 16] -> {"logits", "probs", "embedding"}
  dtypes.pt      one [2, 3] input per dtype -> a nested tuple/list of outputs of the same dtypes
    NAME.inputs.npz / NAME.expected.npz  inputs keyed by forward() argument name, outputs keyed by
                                         flattened output name (see flatten_outputs)
  bad_output.pt  returns (Tensor, int): an output the runtime must refuse (no reference files)
  raises.pt      x float32 [1, 4] -> 2 * x; raises when an element is over 100 (a model error on
                 a given input; no reference files)
  batch_sum.pt   x float32 [1, 4] -> x.sum(0) [4]: an output without the batch as its first
                 dimension, which a batcher must refuse (no reference files)
  pow2_batch.pt  x float32 [1, 4] -> 3 * x; raises unless the batch is a power of two (a model
                 that runs at its buckets' sizes only: a CPU batcher must pad; no reference files)

AOTInductor packages (torch.export + aoti_compile_and_package), compiled from the same module
objects (same weights) as tiny.pt and encoder.pt, with the reference inputs as (static) example inputs:
  tiny.pt2, encoder.pt2                 CPU (the default, --aoti-device cpu)
  tiny.cuda.pt2, encoder.cuda.pt2       with --aoti-device cuda (GPU hosts; writes only these)
    NAME.pt2.inputs.npz / NAME.pt2.expected.npz (or NAME.cuda.pt2.*): the outputs of the package itself

Every model except noisy carries a signature hint, one JSON schema everywhere:
  {"inputs": [{"name": ..., "dtype": ..., "shape": [...], "range": [low, high)}, ...], "torch_version": ...}
in TorchScript files as the extra file "uminfer.json", in packages as metadata "uminfer.signature"
(beside "uminfer.cpu_model", the exporting machine's CPU).

No numpy here (GPU hosts may lack it): .npy/.npz are written by hand. Deterministic: fixed seeds,
single-threaded export, compilation in a fresh temporary inductor cache. Run by ci/setup with the
venv's python; on GPU hosts without the repo's venv, run with any python3 that has torch 2.11.
"""
import argparse
import contextlib
import io
import json
import os
import shutil
import struct
import sys
import tempfile
import time
import warnings
import zipfile
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

INPUT_SHAPE = (1, 3, 128, 128)
TORCH_VERSION = torch.__version__.split("+")[0]

# ---------------------------------------------------------------------------------------------
# Models


class Tiny(nn.Module):
    """A few hundred microseconds on a CPU core: the latency-bound workload."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        x = self.pool(x).flatten(1)
        return self.fc(x)


class Identity(nn.Module):
    """Returns its input (a copy): measures a transport alone, and makes echo checks exact."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clone()


class Noisy(nn.Module):
    """Draws random numbers in its forward pass: a CUDA graph of it must advance the RNG on every replay."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3)) + torch.rand(x.shape[0], x.shape[1], device=x.device)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = nn.Identity()
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.downsample(x))


class ResNet18(nn.Module):
    """torchvision.models.resnet18's topology, written out to avoid a torchvision pin."""

    def __init__(self, classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        layers = []
        inplanes = 64
        for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers.append(nn.Sequential(BasicBlock(inplanes, planes, stride), BasicBlock(planes, planes)))
            inplanes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                # Non-trivial running statistics so that eval-mode BN is really exercised.
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))


ENC_VOCAB, ENC_SEQ, ENC_DIM, ENC_HEADS, ENC_LAYERS, ENC_FFN = 1000, 32, 64, 4, 2, 128


class EncoderLayer(nn.Module):
    """A post-LayerNorm BERT layer: self-attention, then a GELU feed-forward, each with a residual."""

    def __init__(self, dim: int, heads: int, ffn: int):
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.ln1 = nn.LayerNorm(dim)
        self.ff1 = nn.Linear(dim, ffn)
        self.ff2 = nn.Linear(ffn, dim)
        self.ln2 = nn.LayerNorm(dim)

    def forward(self, h: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, s, d = h.shape[0], h.shape[1], h.shape[2]
        q = self.q(h).view(b, s, self.heads, self.head_dim).transpose(1, 2)
        k = self.k(h).view(b, s, self.heads, self.head_dim).transpose(1, 2)
        v = self.v(h).view(b, s, self.heads, self.head_dim).transpose(1, 2)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        a = a.transpose(1, 2).reshape(b, s, d)
        h = self.ln1(h + self.o(a))
        return self.ln2(h + self.ff2(F.gelu(self.ff1(h))))


class Encoder(nn.Module):
    """A small BERT-like encoder written out by hand (nn.TransformerEncoder's fast path makes nested tensors)."""

    def __init__(
        self,
        vocab: int = ENC_VOCAB,
        seq: int = ENC_SEQ,
        dim: int = ENC_DIM,
        heads: int = ENC_HEADS,
        layers: int = ENC_LAYERS,
        ffn: int = ENC_FFN,
    ):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(seq, dim)
        self.ln = nn.LayerNorm(dim)
        self.layers = nn.ModuleList([EncoderLayer(dim, heads, ffn) for _ in range(layers)])
        self.pool = nn.Linear(dim, dim)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        h = self.ln(self.tok(input_ids) + self.pos(positions)[None])
        bias = (1 - attention_mask[:, None, None, :].to(h.dtype)) * -1e4
        for layer in self.layers:
            h = layer(h, bias)
        pooled = torch.tanh(self.pool(h[:, 0]))
        return h, pooled


class Heads(nn.Module):
    """A dict output: classification logits, their softmax, and an embedding from a small MLP."""

    def __init__(self, features: int = 16, classes: int = 10, embed: int = 8):
        super().__init__()
        self.cls = nn.Linear(features, classes)
        self.mlp1 = nn.Linear(features, 32)
        self.mlp2 = nn.Linear(32, embed)

    def forward(self, features: torch.Tensor) -> Dict[str, torch.Tensor]:
        logits = self.cls(features)
        out: Dict[str, torch.Tensor] = {}
        out["logits"] = logits
        out["probs"] = torch.softmax(logits, dim=-1)
        out["embedding"] = self.mlp2(torch.relu(self.mlp1(features)))
        return out


class Dtypes(nn.Module):
    """One input of each dtype, outputs of the same dtypes in a nested tuple/list."""

    def forward(
        self,
        a_f32: torch.Tensor,
        a_f64: torch.Tensor,
        a_f16: torch.Tensor,
        a_bf16: torch.Tensor,
        a_i64: torch.Tensor,
        a_i32: torch.Tensor,
        a_i16: torch.Tensor,
        a_i8: torch.Tensor,
        a_u8: torch.Tensor,
        a_bool: torch.Tensor,
    ) -> Tuple[torch.Tensor, Tuple[torch.Tensor, torch.Tensor], List[torch.Tensor]]:
        return (
            a_f32 + 1,
            (a_f64 * 2, a_f16 + 1),
            [a_bf16 + 1, a_i64 + 1, a_i32 + 1, a_i16 + 1, a_i8 + 1, a_u8 + 1, torch.logical_not(a_bool)],
        )


class BadOutput(nn.Module):
    """Returns a non-tensor among its outputs: the runtime must refuse to flatten it."""

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, int]:
        return x + 1, 3


class Raises(nn.Module):
    """Doubles its input; raises on an element over 100: a model error on a given input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x > 100.0).any()):
            raise RuntimeError("raises.pt: an input element is over 100")
        return x * 2.0


class PowerOfTwoBatch(nn.Module):
    """Triples its input; raises unless the batch size is a power of two."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        if n & (n - 1) != 0:
            raise RuntimeError("pow2_batch.pt: the batch size is not a power of two")
        return x * 3.0


class BatchSum(nn.Module):
    """Sums over the first dimension: its output does not carry the batch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.sum(0)


# ---------------------------------------------------------------------------------------------
# Signature hints

DTYPE_NAMES = {
    torch.float32: "float32",
    torch.float64: "float64",
    torch.float16: "float16",
    torch.bfloat16: "bfloat16",
    torch.int64: "int64",
    torch.int32: "int32",
    torch.int16: "int16",
    torch.int8: "int8",
    torch.uint8: "uint8",
    torch.bool: "bool",
}


def hint_json(inputs: List[Tuple[str, torch.Tensor, Optional[Tuple[int, int]]]]) -> str:
    """The signature hint for (name, example tensor, optional [low, high) range) triples."""
    entries = []
    for name, t, rng in inputs:
        entry = {"name": name, "dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape)}
        if rng is not None:
            entry["range"] = [int(rng[0]), int(rng[1])]
        entries.append(entry)
    return json.dumps({"inputs": entries, "torch_version": TORCH_VERSION})


# ---------------------------------------------------------------------------------------------
# .npy / .npz without numpy

NPY_DESCR = {
    torch.float32: "<f4",
    torch.float64: "<f8",
    torch.float16: "<f2",
    torch.int64: "<i8",
    torch.int32: "<i4",
    torch.int16: "<i2",
    torch.int8: "|i1",
    torch.uint8: "|u1",
    torch.bool: "|b1",
}


def npy_bytes(t: torch.Tensor) -> bytes:
    """A tensor as .npy (format 1.0, data 64-byte aligned); bfloat16, which NumPy lacks, as float32 (exact)."""
    assert sys.byteorder == "little", "the raw tensor bytes are written as little-endian"
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        t = t.to(torch.float32)
    descr = NPY_DESCR[t.dtype]
    t = t.contiguous()
    header = "{'descr': '%s', 'fortran_order': False, 'shape': (%s), }" % (
        descr,
        "".join(f"{d}, " for d in t.shape).rstrip(" "),
    )
    header += "\n"
    pad = (64 - (10 + len(header)) % 64) % 64
    header = header[:-1] + " " * pad + "\n"
    data = bytes(t.view(torch.uint8).flatten().tolist()) if t.numel() else b""
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode("latin1") + data


def save_npy(path: str, t: torch.Tensor) -> None:
    """Writes a tensor as float32 .npy (the format of the NAME.input.npy / NAME.expected.npy pairs)."""
    with open(path, "wb") as f:
        f.write(npy_bytes(t.detach().to(torch.float32)))


def save_npz(path: str, arrays: List[Tuple[str, torch.Tensor]]) -> None:
    """Writes (key, tensor) pairs as an uncompressed .npz: a zip of KEY.npy members, in order."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:
        for key, t in arrays:
            # A fixed timestamp, so that the same tensors give the same file.
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_STORED
            info.external_attr = 0o644 << 16
            z.writestr(info, npy_bytes(t))


def flatten_outputs(out, prefix: str = "") -> List[Tuple[str, torch.Tensor]]:
    """Output names as the runtime flattens them: a single tensor -> output__0; a top-level tuple or
    list -> output__0, output__1, ...; a top-level dict -> its keys; nested containers join with '.'
    (output__1.0, output__2.KEY)."""
    if not prefix:
        if isinstance(out, torch.Tensor):
            return [("output__0", out)]
        if isinstance(out, (tuple, list)):
            return [kv for i, v in enumerate(out) for kv in flatten_outputs(v, f"output__{i}")]
        if isinstance(out, dict):
            return [kv for k, v in out.items() for kv in flatten_outputs(v, str(k))]
        raise TypeError(f"cannot flatten an output of type {type(out).__name__}")
    if isinstance(out, torch.Tensor):
        return [(prefix, out)]
    if isinstance(out, (tuple, list)):
        return [kv for i, v in enumerate(out) for kv in flatten_outputs(v, f"{prefix}.{i}")]
    if isinstance(out, dict):
        return [kv for k, v in out.items() for kv in flatten_outputs(v, f"{prefix}.{k}")]
    raise TypeError(f"cannot flatten {prefix} of type {type(out).__name__}")


# ---------------------------------------------------------------------------------------------
# Builders: each makes the module (fixed seed) and its reference inputs [(name, tensor, range)].


def build_image(cls, seed: int):
    torch.manual_seed(seed)
    model = cls().eval()
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.rand(INPUT_SHAPE, generator=gen, dtype=torch.float32)
    return model, [("x", x, None)]


def build_encoder(seed: int = 32):
    torch.manual_seed(seed)
    model = Encoder().eval()
    gen = torch.Generator().manual_seed(seed + 1)
    input_ids = torch.randint(0, ENC_VOCAB, (1, ENC_SEQ), generator=gen, dtype=torch.int64)
    attention_mask = torch.ones(1, ENC_SEQ, dtype=torch.int64)
    attention_mask[:, -8:] = 0
    return model, [("input_ids", input_ids, (0, ENC_VOCAB)), ("attention_mask", attention_mask, (0, 2))]


def build_heads(seed: int = 16):
    torch.manual_seed(seed)
    model = Heads().eval()
    gen = torch.Generator().manual_seed(seed + 1)
    return model, [("features", torch.randn(1, 16, generator=gen, dtype=torch.float32), None)]


def build_dtypes(seed: int = 3):
    gen = torch.Generator().manual_seed(seed)
    shape = (2, 3)
    signed = (-5, 6)

    def ints(dtype, rng):
        return torch.randint(rng[0], rng[1], shape, generator=gen, dtype=torch.int64).to(dtype)

    inputs = [
        ("a_f32", torch.rand(shape, generator=gen, dtype=torch.float32), None),
        ("a_f64", torch.rand(shape, generator=gen, dtype=torch.float64), None),
        ("a_f16", torch.rand(shape, generator=gen, dtype=torch.float32).to(torch.float16), None),
        ("a_bf16", torch.rand(shape, generator=gen, dtype=torch.float32).to(torch.bfloat16), None),
        ("a_i64", ints(torch.int64, signed), signed),
        ("a_i32", ints(torch.int32, signed), signed),
        ("a_i16", ints(torch.int16, signed), signed),
        ("a_i8", ints(torch.int8, signed), signed),
        ("a_u8", ints(torch.uint8, (0, 10)), (0, 10)),
        ("a_bool", torch.randint(0, 2, shape, generator=gen, dtype=torch.int64).to(torch.bool), None),
    ]
    return Dtypes().eval(), inputs


# ---------------------------------------------------------------------------------------------
# Writers


def save_script(path: str, scripted, hint) -> None:
    if hint is None:
        torch.jit.save(scripted, path)
    else:
        torch.jit.save(scripted, path, _extra_files={"uminfer.json": hint})


def export_image(name: str, model: nn.Module, inputs, out: str, seed: int, hint: bool) -> None:
    """The single-input image models: NAME.pt + NAME.input.npy / NAME.expected.npy (float32)."""
    torch.manual_seed(seed)
    model.eval()
    scripted = torch.jit.script(model)
    path = os.path.join(out, f"{name}.pt")
    save_script(path, scripted, hint_json(inputs) if hint else None)
    x = inputs[0][1]
    with torch.no_grad():
        y = scripted(x)
    save_npy(os.path.join(out, f"{name}.input.npy"), x)
    save_npy(os.path.join(out, f"{name}.expected.npy"), y)
    print(f"wrote {path} ({os.path.getsize(path)} bytes), output shape {tuple(y.shape)}")


def export_script(name: str, model: nn.Module, inputs, out: str, reference: bool = True) -> None:
    """NAME.pt with its hint, and (reference) NAME.inputs.npz / NAME.expected.npz."""
    model.eval()
    scripted = torch.jit.script(model)
    path = os.path.join(out, f"{name}.pt")
    save_script(path, scripted, hint_json(inputs))
    msg = f"wrote {path} ({os.path.getsize(path)} bytes)"
    if reference:
        args = [t for _, t, _ in inputs]
        with torch.inference_mode():
            y = flatten_outputs(scripted(*args))
        save_npz(os.path.join(out, f"{name}.inputs.npz"), [(n, t) for n, t, _ in inputs])
        save_npz(os.path.join(out, f"{name}.expected.npz"), y)
        msg += ", outputs " + ", ".join(f"{k} {tuple(t.shape)} {DTYPE_NAMES[t.dtype]}" for k, t in y)
    print(msg)


@contextlib.contextmanager
def fresh_inductor():
    """Compilation in a new, private inductor (and triton) cache, deleted afterwards; caches off."""
    import torch._inductor.config as ic

    tmp = tempfile.mkdtemp(prefix="uminfer-inductor-")
    saved = {k: os.environ.get(k) for k in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")}
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tmp
    os.environ["TRITON_CACHE_DIR"] = os.path.join(tmp, "triton")
    try:
        with warnings.catch_warnings(), ic.patch(
            {
                "force_disable_caches": True,
                "deterministic": True,  # no on-device benchmarking that could change numerics
                "compile_threads": 1,  # no worker pool: quiet, and the same result every run
            }
        ):
            # torch 2.11's own pytree deprecation, raised inside the packager: not ours to fix.
            warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
            yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(tmp, ignore_errors=True)


def cpu_model() -> str:
    """This machine's CPU (/proc/cpuinfo): CPU packages are compiled with -march=native for it."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def export_package(name: str, model: nn.Module, inputs, out: str, device: str) -> None:
    """NAME.pt2 (or NAME.cuda.pt2) with its hint, and NAME[.cuda].pt2.inputs.npz / .expected.npz."""
    import torch._inductor

    base = f"{name}.pt2" if device == "cpu" else f"{name}.{device}.pt2"
    path = os.path.abspath(os.path.join(out, base))
    dev = torch.device("cpu" if device == "cpu" else "cuda:0")
    model = model.eval().to(dev)
    args = tuple(t.to(dev) for _, t, _ in inputs)
    hint = hint_json(inputs)
    start = time.monotonic()
    with fresh_inductor():
        with torch.no_grad():
            ep = torch.export.export(model, args)
        if os.path.exists(path):
            os.remove(path)
        # The compiler's own chatter (C++ warnings, progress) goes to a buffer, shown only on failure.
        log = io.StringIO()
        try:
            with contextlib.redirect_stdout(log):
                torch._inductor.aoti_compile_and_package(
                    ep,
                    package_path=path,
                    inductor_configs={"aot_inductor.metadata": {"uminfer.signature": hint, "uminfer.cpu_model": cpu_model()}},
                )
        except Exception:
            sys.stderr.write(log.getvalue())
            raise
    took = time.monotonic() - start
    runner = torch._inductor.aoti_load_package(path)
    with torch.inference_mode():
        y = runner(*args)
    y = [(k, t.detach().cpu()) for k, t in flatten_outputs(y)]
    save_npz(os.path.join(out, f"{base}.inputs.npz"), [(n, t) for n, t, _ in inputs])
    save_npz(os.path.join(out, f"{base}.expected.npz"), y)
    if device != "cpu":
        model.to("cpu")
    print(
        f"wrote {os.path.join(out, base)} ({os.path.getsize(path)} bytes) in {took:.1f} s, outputs "
        + ", ".join(f"{k} {tuple(t.shape)} {DTYPE_NAMES[t.dtype]}" for k, t in y)
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument(
        "--only",
        choices=["tiny", "resnet18", "identity", "noisy", "encoder", "heads", "dtypes", "bad_output", "raises", "batch_sum", "pow2_batch"],
        help="export one model only (tiny and encoder: with their AOTInductor package unless --no-aoti)",
    )
    ap.add_argument(
        "--aoti-device",
        choices=["cpu", "cuda"],
        default="cpu",
        help="device of the AOTInductor packages; cuda writes only NAME.cuda.pt2 (GPU hosts)",
    )
    ap.add_argument("--no-aoti", action="store_true", help="skip the AOTInductor packages")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    if args.aoti_device == "cuda":
        if args.no_aoti:
            ap.error("--aoti-device cuda writes only packages: it cannot go with --no-aoti")
        if not torch.cuda.is_available():
            ap.error("--aoti-device cuda: torch sees no CUDA device")
        # Deterministic cuBLAS under use_deterministic_algorithms (read when cuBLAS starts).
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    total = time.monotonic()
    scripts = args.aoti_device == "cpu"  # with cuda, the TorchScript models already exist there
    packages = not args.no_aoti

    def wanted(name: str) -> bool:
        return args.only in (None, name)

    if wanted("tiny"):
        model, inputs = build_image(Tiny, seed=1)
        if scripts:
            export_image("tiny", model, inputs, args.out, seed=1, hint=True)
        if packages:
            export_package("tiny", model, inputs, args.out, args.aoti_device)
    if scripts and wanted("identity"):
        model, inputs = build_image(Identity, seed=7)
        export_image("identity", model, inputs, args.out, seed=7, hint=True)
    if scripts and wanted("noisy"):
        model, inputs = build_image(Noisy, seed=9)
        export_image("noisy", model, inputs, args.out, seed=9, hint=False)
    if scripts and wanted("resnet18"):
        model, inputs = build_image(ResNet18, seed=18)
        export_image("resnet18", model, inputs, args.out, seed=18, hint=True)
    if wanted("encoder"):
        model, inputs = build_encoder()
        if scripts:
            export_script("encoder", model, inputs, args.out)
        if packages:
            export_package("encoder", model, inputs, args.out, args.aoti_device)
    if scripts and wanted("heads"):
        model, inputs = build_heads()
        export_script("heads", model, inputs, args.out)
    if scripts and wanted("dtypes"):
        model, inputs = build_dtypes()
        export_script("dtypes", model, inputs, args.out)
    if scripts and wanted("bad_output"):
        x = torch.zeros(1, 4, dtype=torch.float32)
        export_script("bad_output", BadOutput(), [("x", x, None)], args.out, reference=False)
    if scripts and wanted("raises"):
        x = torch.zeros(1, 4, dtype=torch.float32)
        export_script("raises", Raises(), [("x", x, None)], args.out, reference=False)
    if scripts and wanted("batch_sum"):
        x = torch.zeros(1, 4, dtype=torch.float32)
        export_script("batch_sum", BatchSum(), [("x", x, None)], args.out, reference=False)
    if scripts and wanted("pow2_batch"):
        x = torch.zeros(1, 4, dtype=torch.float32)
        export_script("pow2_batch", PowerOfTwoBatch(), [("x", x, None)], args.out, reference=False)
    print(f"export took {time.monotonic() - total:.1f} s")


if __name__ == "__main__":
    main()
