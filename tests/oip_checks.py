"""Checks shared by the tritonclient-driven test clients (tests/oip_client.py
over gRPC, tests/oip_http_client.py over REST): each failure exits with
`FAILED: ...`, which tests/oip_python.rs shows with the server's log."""
import sys

import numpy as np
from tritonclient.utils import InferenceServerException

SHAPE = [1, 3, 128, 128]


def fail(msg):
    sys.exit(f"FAILED: {msg}")


def check(cond, msg):
    if not cond:
        fail(msg)


def close(y, expected, what):
    """The max abs difference of y from expected, which must be within 1e-5 × max(1, max |expected|)."""
    check(y is not None, f"{what}: no output")
    check(y.shape == expected.shape, f"{what}: shape {y.shape}, expected {expected.shape}")
    diff = float(np.abs(y - expected).max())
    check(diff <= 1e-5 * max(1.0, float(np.abs(expected).max())), f"{what}: max abs diff {diff}")
    return diff


def expect_error(label, status, needle, call):
    """call() must raise tritonclient's error with `status` (a grpc.StatusCode,
    or an HTTP status number) and a message containing `needle`; prints label=status."""
    try:
        call()
    except InferenceServerException as e:
        got, msg = e.status(), e.message()
    else:
        fail(f"{label}: no error")
    check(got == str(status) and needle in (msg or ""), f"{label}: {got} {msg!r}, expected {status} containing {needle!r}")
    print(f"{label}={got}")
