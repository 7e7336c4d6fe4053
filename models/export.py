#!/usr/bin/env python3
"""Export the reference TorchScript workloads used by uminfer's tests and benchmarks.

Writes, for input 1x3x128x128 float32:
  tiny.pt       a small CNN (two strided convolutions, pooling, a linear layer; 10 classes)
  resnet18.pt   the standard ResNet-18 topology (BasicBlock, [2, 2, 2, 2], 1000 classes), random weights
and, for each model, a reference pair computed here by PyTorch itself:
  NAME.input.npy     a deterministic random input
  NAME.expected.npy  the model's output for it (eval mode, float32, CPU)
so that the Rust side can check its results against PyTorch's, not against itself.

Deterministic: fixed seeds, single-threaded export. Run by ci/setup with the venv's python;
on GPU hosts without the repo's venv, run with any python3 that has torch 2.11.
"""
import argparse
import array
import os
import struct

import torch
import torch.nn as nn

INPUT_SHAPE = (1, 3, 128, 128)


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


def save_npy(path: str, t: torch.Tensor) -> None:
    """Writes a float32 tensor as .npy (format 1.0) without needing numpy (GPU hosts may lack it)."""
    t = t.detach().to(torch.float32).contiguous().cpu()
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (%s), }" % "".join(f"{d}, " for d in t.shape).rstrip(" ")
    header += "\n"
    pad = (64 - (10 + len(header)) % 64) % 64
    header = header[:-1] + " " * pad + "\n"
    with open(path, "wb") as f:
        f.write(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode("latin1"))
        f.write(array.array("f", t.flatten().tolist()).tobytes())


def export(name: str, model: nn.Module, out: str, seed: int) -> None:
    torch.manual_seed(seed)
    model.eval()
    scripted = torch.jit.script(model)
    path = os.path.join(out, f"{name}.pt")
    scripted.save(path)
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.rand(INPUT_SHAPE, generator=gen, dtype=torch.float32)
    with torch.no_grad():
        y = scripted(x)
    save_npy(os.path.join(out, f"{name}.input.npy"), x)
    save_npy(os.path.join(out, f"{name}.expected.npy"), y)
    print(f"wrote {path} ({os.path.getsize(path)} bytes), output shape {tuple(y.shape)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--only", choices=["tiny", "resnet18", "identity", "noisy"], help="export one model only")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    if args.only in (None, "tiny"):
        torch.manual_seed(1)
        export("tiny", Tiny(), args.out, seed=1)
    if args.only in (None, "identity"):
        export("identity", Identity(), args.out, seed=7)
    if args.only in (None, "noisy"):
        export("noisy", Noisy(), args.out, seed=9)
    if args.only in (None, "resnet18"):
        torch.manual_seed(18)
        export("resnet18", ResNet18(), args.out, seed=18)


if __name__ == "__main__":
    main()
