"""Command line: send one ``.npy`` tensor to a ``uminfer serve`` endpoint, write the output as ``.npy``.

Usage::

    python3 -m uminfer_client --name NAME --input x.npy --output y.npy [--timeout S]

Exit status 0 on success; 2 with the error on stderr otherwise.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from . import Client, UminferError


def main(argv: list[str] | None = None) -> int:
    """Parses ``argv``, runs one request and returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python3 -m uminfer_client",
        description="Send one float32 .npy tensor to a `uminfer serve` endpoint; write the response as .npy.",
    )
    parser.add_argument("--name", required=True, help="endpoint name (the service is uminfer/NAME)")
    parser.add_argument("--input", required=True, help="input tensor (.npy, float32 or convertible to it)")
    parser.add_argument("--output", required=True, help="where to write the output tensor (.npy)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the server and the response")
    args = parser.parse_args(argv)
    try:
        x = np.load(args.input, allow_pickle=False)
        with Client(args.name, timeout=args.timeout) as client:
            y = client.infer(x)
        with open(args.output, "wb") as f:
            np.save(f, y)
    except (UminferError, OSError, TypeError, ValueError) as e:
        print(f"uminfer_client: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
