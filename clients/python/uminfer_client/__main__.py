"""Command line: send tensors from ``.npy`` / ``.npz`` files to a ``uminfer serve`` endpoint, write the outputs.

Usage::

    python3 -m uminfer_client --name NAME --input x.npy --output y.npy [--timeout S]
    python3 -m uminfer_client --name NAME --input input_ids=ids.npy --input attention_mask=mask.npy --output out.npz
    python3 -m uminfer_client --name NAME --input inputs.npz --output out.npz

A lone ``.npy`` goes to a one-input model's input; ``NAME=FILE.npy`` names
the input; an ``.npz`` holds inputs under their names. The output is
``.npy`` for a model with one output, ``.npz`` (each output under its name)
for any. bfloat16 outputs are written as float32 (``.npy`` has no bfloat16).

Exit status 0 on success; 2 with the error on stderr otherwise.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import ml_dtypes
import numpy as np

from . import Client, UminferError


def _read_inputs(args: list[str]) -> dict[str, Any] | Any:
    """The arrays of the ``--input`` arguments: by name, or one unnamed array."""
    named: dict[str, Any] = {}
    unnamed = []
    for a in args:
        name, sep, path = a.partition("=")
        if not sep or "/" in name or not name:
            name, path = "", a
        if path.endswith(".npz"):
            if name:
                raise ValueError(f"--input {a}: an .npz holds its inputs under their own names; give it without NAME=")
            with np.load(path, allow_pickle=False) as z:
                named.update({k: z[k] for k in z.files})
        elif name:
            named[name] = np.load(path, allow_pickle=False)
        else:
            unnamed.append(np.load(path, allow_pickle=False))
    if unnamed:
        if len(unnamed) > 1 or named:
            raise ValueError("name each input (--input NAME=FILE.npy) when there is more than one")
        return unnamed[0]
    return named


def _storable(a: Any) -> Any:
    """``a`` as NumPy files store it: bfloat16 as float32."""
    return a.astype(np.float32) if a.dtype == np.dtype(ml_dtypes.bfloat16) else a


def main(argv: list[str] | None = None) -> int:
    """Parses ``argv``, runs one request and returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python3 -m uminfer_client",
        description="Send tensors to a `uminfer serve` endpoint (shared memory, protocol v2); write its outputs.",
    )
    parser.add_argument("--name", required=True, help="endpoint name (the service is uminfer/NAME/v2)")
    parser.add_argument("--input", required=True, action="append", help="[NAME=]FILE.npy or FILE.npz (repeatable)")
    parser.add_argument("--output", required=True, help="where to write the outputs (.npy for one, .npz for any)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the server and the response")
    args = parser.parse_args(argv)
    try:
        inputs = _read_inputs(args.input)
        with Client(args.name, timeout=args.timeout) as client:
            outputs = client.infer(inputs)
        if args.output.endswith(".npz"):
            np.savez(args.output, **{k: _storable(v) for k, v in outputs.items()})
        elif len(outputs) == 1:
            with open(args.output, "wb") as f:
                np.save(f, _storable(next(iter(outputs.values()))))
        else:
            raise ValueError(f"the model has {len(outputs)} outputs ({', '.join(outputs)}): give --output FILE.npz")
    except (UminferError, OSError, TypeError, ValueError) as e:
        print(f"uminfer_client: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
