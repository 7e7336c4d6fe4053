"""Python client of a ``uminfer serve`` endpoint (shared-memory IPC contract, protocol v2).

A server started with ``uminfer serve --name NAME --model PATH`` serves one
model (any signature) as the iceoryx2 request-response service
``uminfer/NAME/v2`` (see ``docs/ipc.md`` in the repository). This module
speaks that contract:

* :class:`Client` opens the service with exactly the server's settings, asks
  the server for the model's signature (:attr:`Client.inputs`,
  :attr:`Client.outputs`), writes each input array straight into the
  shared-memory sample iceoryx2 lends it (a NumPy view over the sample, no
  intermediate buffer), notifies the server, and waits for the response: a
  200 µs spin, then its own response-event listener in slices of at most
  50 ms, checking every 200 ms that the server is still alive.
* Every dtype the runtime takes: float32, float64, float16, bfloat16 (as
  ``ml_dtypes.bfloat16``, the type JAX uses), int64, int32, int16, int8,
  uint8 and bool.
* :class:`UminferRequestHeaderV2` / :class:`UminferResponseHeaderV2` (each a
  table of :class:`TensorEntry`) are the wire headers as :mod:`ctypes` structures.
* Failures raise subclasses of :class:`UminferError`: :class:`ServerGone`,
  :class:`Timeout` and :class:`RemoteError`.

Example::

    import numpy as np
    from uminfer_client import Client

    with Client("encoder", timeout=5.0) as client:
        out = client.infer({"input_ids": ids, "attention_mask": mask})   # {"output__0": ..., "output__1": ...}
    with Client("tiny") as client:
        y = client.infer(np.zeros((1, 3, 128, 128), np.float32))["output__0"]
"""

from __future__ import annotations

import ctypes
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Union

import iceoryx2 as iox2
import ml_dtypes
import numpy as np
import numpy.typing as npt

__all__ = [
    "Client",
    "RemoteError",
    "ServerGone",
    "TensorEntry",
    "TensorInfo",
    "Timeout",
    "UminferError",
    "UminferRequestHeaderV2",
    "UminferResponseHeaderV2",
    "STATUS_OK",
    "STATUS_BAD_REQUEST",
    "STATUS_MODEL_ERROR",
    "STATUS_SERVER_ERROR",
    "STATUS_BUSY",
]

__version__ = "0.2.0"

MAGIC: Final = 0x554D4946
"""``"UMIF"``: first field of every header."""
PROTOCOL_VERSION: Final = 2
"""Version of the contract this client speaks."""
MAX_TENSORS: Final = 16
"""Most tensors a table describes."""
MAX_NAME_LEN: Final = 64
"""Longest tensor name, in UTF-8 bytes."""
MAX_RANK: Final = 8
"""Highest tensor rank a table entry can describe."""
MAX_ERROR_LEN: Final = 256
"""Bytes of error text a response can carry."""
TENSOR_ALIGN: Final = 64
"""Every tensor's offset in a payload is a multiple of this."""
KIND_INFER: Final = 0
KIND_DESCRIBE: Final = 1

STATUS_OK: Final = 0
"""Response status: the payload holds the model's outputs."""
STATUS_BAD_REQUEST: Final = 1
"""Response status: the request was malformed (table, names, dtypes, shapes)."""
STATUS_MODEL_ERROR: Final = 2
"""Response status: the model failed on a well-formed request."""
STATUS_SERVER_ERROR: Final = 3
"""Response status: the server could not answer a well-formed request (shared memory)."""
STATUS_BUSY: Final = 4
"""Response status: a batching server is at capacity (queue full, queue timeout, stopping): retry later."""

# dtype codes of a table entry (docs/ipc.md) and the NumPy dtype of each.
_DTYPES: Final[dict[int, np.dtype[Any]]] = {
    1: np.dtype(np.float32),
    2: np.dtype(np.float64),
    3: np.dtype(np.float16),
    4: np.dtype(ml_dtypes.bfloat16),
    5: np.dtype(np.int64),
    6: np.dtype(np.int32),
    7: np.dtype(np.int16),
    8: np.dtype(np.int8),
    9: np.dtype(np.uint8),
    10: np.dtype(np.bool_),
}
_CODES: Final = {d: c for c, d in _DTYPES.items()}
# PyTorch's dtype names (a describe response's) to NumPy's.
_TORCH_NAMES: Final = {"bfloat16": np.dtype(ml_dtypes.bfloat16), **{str(d): d for d in _DTYPES.values() if d != np.dtype(ml_dtypes.bfloat16)}}
_FLOATS: Final = frozenset(c for c in (1, 2, 3, 4))

# Service settings: identical on every side, or iceoryx2 refuses to connect.
_MAX_CLIENTS: Final = 64
_MAX_NODES: Final = _MAX_CLIENTS + 8
_MAX_ACTIVE_REQUESTS_PER_CLIENT: Final = 2
_MAX_RESPONSE_BUFFER_SIZE: Final = 2
_MAX_LOANED_REQUESTS: Final = 2
_MAX_REQUEST_NOTIFIERS: Final = _MAX_CLIENTS
_MAX_REQUEST_LISTENERS: Final = 2
_MAX_RESPONSE_NOTIFIERS: Final = 32
_MAX_RESPONSE_LISTENERS: Final = _MAX_CLIENTS

# Waiting (docs/ipc.md, "Waiting").
_SPIN_S: Final = 200e-6
_WAIT_SLICE_S: Final = 0.05
_LIVENESS_PERIOD_S: Final = 0.2
_CONNECT_POLL_S: Final = 0.02
# Opening fails this way while no server has created the service yet, or while
# the last holder of a stopped server's service is removing it: retry.
_TRANSIENT_OPEN_ERRORS: Final = frozenset({"DoesNotExist", "IsMarkedForDestruction"})

_VALID_NAME_CHARS: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")


class TensorEntry(ctypes.Structure):
    """One tensor of a table (152 bytes, align 8): name, dtype code, shape, byte offset and length in the payload."""

    _fields_ = [
        ("name", ctypes.c_uint8 * MAX_NAME_LEN),
        ("name_len", ctypes.c_uint8),
        ("dtype", ctypes.c_uint8),
        ("rank", ctypes.c_uint8),
        ("reserved", ctypes.c_uint8 * 5),
        ("shape", ctypes.c_uint64 * MAX_RANK),
        ("offset", ctypes.c_uint64),
        ("len", ctypes.c_uint64),
    ]


class UminferRequestHeaderV2(ctypes.Structure):
    """Request header (2456 bytes, align 8); the payload holds the tensors where the table says."""

    _fields_ = [
        ("magic", ctypes.c_uint32),
        ("version", ctypes.c_uint16),
        ("kind", ctypes.c_uint8),
        ("count", ctypes.c_uint8),
        ("request_id", ctypes.c_uint64),
        ("max_response_bytes", ctypes.c_uint64),
        ("tensors", TensorEntry * MAX_TENSORS),
    ]

    @staticmethod
    def type_name() -> str:
        """The iceoryx2 type name; equals the Rust header's ``#[type_name]``."""
        return "UminferRequestHeaderV2"


class UminferResponseHeaderV2(ctypes.Structure):
    """Response header (2712 bytes, align 8); the payload holds the outputs unless ``status != 0``."""

    _fields_ = [
        ("magic", ctypes.c_uint32),
        ("version", ctypes.c_uint16),
        ("status", ctypes.c_uint16),
        ("count", ctypes.c_uint8),
        ("reserved0", ctypes.c_uint8),
        ("error_len", ctypes.c_uint16),
        ("reserved", ctypes.c_uint32),
        ("request_id", ctypes.c_uint64),
        ("tensors", TensorEntry * MAX_TENSORS),
        ("error", ctypes.c_uint8 * MAX_ERROR_LEN),
    ]

    @staticmethod
    def type_name() -> str:
        """The iceoryx2 type name; equals the Rust header's ``#[type_name]``."""
        return "UminferResponseHeaderV2"


assert ctypes.sizeof(TensorEntry) == 152 and ctypes.alignment(TensorEntry) == 8
assert ctypes.sizeof(UminferRequestHeaderV2) == 2456 and ctypes.alignment(UminferRequestHeaderV2) == 8
assert ctypes.sizeof(UminferResponseHeaderV2) == 2712 and ctypes.alignment(UminferResponseHeaderV2) == 8


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of the model's signature, as the server describes it."""

    name: str
    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    range: tuple[int, int] | None = None
    """Valid values ``[low, high)`` of an integer input, where the model records them."""


class UminferError(Exception):
    """Base class of every error this client raises about the endpoint."""


class ServerGone(UminferError):
    """No live server serves the endpoint (never started, stopped, or died while waiting)."""


class Timeout(UminferError):
    """The response did not arrive within the client's timeout."""


class RemoteError(UminferError):
    """The server answered with an error status.

    Attributes:
        status: :data:`STATUS_BAD_REQUEST` (1), :data:`STATUS_MODEL_ERROR` (2), :data:`STATUS_SERVER_ERROR` (3)
            or :data:`STATUS_BUSY` (4).
        message: the server's explanation.

    """

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        kind = {
            STATUS_BAD_REQUEST: "bad request",
            STATUS_MODEL_ERROR: "model error",
            STATUS_SERVER_ERROR: "server error",
            STATUS_BUSY: "busy",
        }.get(status, "unknown status")
        super().__init__(f"{kind} (status {status}): {message}")


Inputs = Union[npt.ArrayLike, Mapping[str, npt.ArrayLike]]


class Client:
    """A connection to endpoint ``uminfer/NAME`` (its protocol v2 service ``uminfer/NAME/v2``).

    The constructor waits up to ``timeout`` seconds for a live server, then
    raises :class:`ServerGone`; ``timeout`` also bounds every request. A client
    sends one request at a time and is not thread-safe: use one per thread.
    """

    def __init__(self, name: str, timeout: float = 10.0) -> None:
        """Connects to endpoint ``name`` (1-200 characters of ``[A-Za-z0-9-_.]``) and reads the model's signature."""
        if not 1 <= len(name) <= 200 or not set(name) <= _VALID_NAME_CHARS:
            raise ValueError(f"endpoint name {name!r} must be 1 to 200 characters of [A-Za-z0-9-_.]")
        if not timeout > 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        self._service_name = f"uminfer/{name}/v2"
        self._events = f"uminfer/{name}"
        self._timeout = float(timeout)
        self._next_id = 1
        self._closed = False

        iox2.set_log_level(iox2.LogLevel.Error)
        try:
            self._node = (
                iox2.NodeBuilder.new()
                .name(iox2.NodeName.new(f"uminfer-client-py-{os.getpid()}"))
                .config(iox2.config.default())
                # Leave SIGINT/SIGTERM to Python (KeyboardInterrupt keeps working).
                .signal_handling_mode(iox2.SignalHandlingMode.Disabled)
                .create(iox2.ServiceType.Ipc)
            )
        except Exception as e:
            raise UminferError(f"creating an iceoryx2 node: {e!r}") from e
        self._service = self._open_service(time.monotonic() + self._timeout)
        try:
            self._port = (
                self._service.client_builder()
                .initial_max_slice_len(1)
                .allocation_strategy(iox2.AllocationStrategy.PowerOfTwo)
                .create()
            )
            self._notifier = (
                self._event_service(f"{self._events}/requests", _MAX_REQUEST_NOTIFIERS, _MAX_REQUEST_LISTENERS)
                .notifier_builder()
                .create()
            )
            # The server wakes the listener named after this client's id (Rust `format!("{}", id)` = lowercase hex).
            listener_name = iox2.PortName.new(format(self._port.id.value, "x"))
            self._listener = (
                self._event_service(f"{self._events}/responses", _MAX_RESPONSE_NOTIFIERS, _MAX_RESPONSE_LISTENERS)
                .listener_builder()
                .name(listener_name)
                .create()
            )
        except Exception as e:
            raise UminferError(f"connecting to {self._service_name}: {e!r}") from e
        self.inputs, self.outputs, self.max_bytes = self.describe()

    def _open_service(self, deadline: float) -> Any:
        """Opens ``uminfer/NAME/v2`` once it has a live server; :class:`ServerGone` at ``deadline``."""
        name = iox2.ServiceName.new(self._service_name)
        align = iox2.Alignment.new(TENSOR_ALIGN)
        service: Any = None
        while True:
            if service is None:
                try:
                    service = (
                        self._node.service_builder(name)
                        .request_response(iox2.Slice[ctypes.c_uint8], iox2.Slice[ctypes.c_uint8])
                        .request_header(UminferRequestHeaderV2)
                        .response_header(UminferResponseHeaderV2)
                        .request_payload_alignment(align)
                        .response_payload_alignment(align)
                        .max_servers(1)
                        .max_clients(_MAX_CLIENTS)
                        .max_nodes(_MAX_NODES)
                        .max_active_requests_per_client(_MAX_ACTIVE_REQUESTS_PER_CLIENT)
                        .max_response_buffer_size(_MAX_RESPONSE_BUFFER_SIZE)
                        .max_loaned_requests(_MAX_LOANED_REQUESTS)
                        .open()
                    )
                except iox2.RequestResponseOpenError as e:
                    if str(e) not in _TRANSIENT_OPEN_ERRORS:
                        raise UminferError(f"opening {self._service_name}: {e!r}") from e
            if service is not None:
                if service.dynamic_config.number_of_servers > 0:
                    return service
                self._node.try_cleanup_dead_nodes()
            if time.monotonic() >= deadline:
                raise ServerGone(
                    f"no live server serves {self._service_name} (waited {self._timeout:g} s; "
                    "start one with `uminfer serve --name ...`, a uminfer that speaks protocol v2)"
                )
            time.sleep(_CONNECT_POLL_S)

    def _event_service(self, service_name: str, max_notifiers: int, max_listeners: int) -> Any:
        """Opens (or creates) one of the endpoint's event services with the contract's settings."""
        return (
            self._node.service_builder(iox2.ServiceName.new(service_name))
            .event()
            .max_notifiers(max_notifiers)
            .max_listeners(max_listeners)
            .max_nodes(_MAX_NODES)
            .open_or_create()
        )

    @property
    def timeout(self) -> float:
        """Seconds a request (and the connection) may take."""
        return self._timeout

    def describe(self) -> tuple[list[TensorInfo], list[TensorInfo], int]:
        """Asks the server for the model's signature: its inputs, its outputs, and the largest request payload."""
        request_id, pending = self._send(KIND_DESCRIBE, [], 0)
        text = self._await_response(pending, request_id, lambda h, ptr, size: bytes((ctypes.c_uint8 * size).from_address(ptr)))
        try:
            doc = json.loads(text)

            def tensors(key: str) -> list[TensorInfo]:
                return [
                    TensorInfo(t["name"], _TORCH_NAMES[t["dtype"]], tuple(t["shape"]), tuple(t["range"]) if t.get("range") else None)
                    for t in doc[key]
                ]

            return tensors("inputs"), tensors("outputs"), int(doc["max_bytes"])
        except (KeyError, TypeError, ValueError) as e:
            raise UminferError(f"{self._service_name} described its model unreadably: {e!r}") from e

    def infer(self, inputs: Inputs, out: Mapping[str, npt.NDArray[Any]] | None = None) -> dict[str, npt.NDArray[Any]]:
        """Runs the model and returns its outputs by name, in the model's order.

        ``inputs`` maps each input's name to an array (any order); a model
        with one input also takes the array alone. Each array is written
        straight into shared memory; where its dtype is not the input's, a
        floating-point array is converted to the input's floating dtype (and
        any array to a dtype it casts to safely) while it is written, and
        anything else is sent as it is (the server refuses it, naming the
        input's dtype). Outputs named in ``out`` are copied into those arrays
        (of the output's dtype and shape; returned in the dict), the others
        into new arrays.
        """
        if self._closed:
            raise UminferError(f"the client of {self._service_name} is closed")
        if not isinstance(inputs, Mapping):
            if len(self.inputs) != 1:
                names = ", ".join(i.name for i in self.inputs)
                raise TypeError(f"the model takes {len(self.inputs)} inputs ({names}): pass a dict of them by name")
            inputs = {self.inputs[0].name: inputs}
        arrays = [(str(name), self._fitted(str(name), x)) for name, x in inputs.items()]
        if len(arrays) > MAX_TENSORS:
            raise ValueError(f"{len(arrays)} tensors given; protocol v2 carries at most {MAX_TENSORS}")
        request_id, pending = self._send(KIND_INFER, arrays, 0)
        return self._await_response(pending, request_id, lambda h, ptr, size: self._read_outputs(h, ptr, size, out))

    def _fitted(self, name: str, x: npt.ArrayLike) -> tuple[npt.NDArray[Any], np.dtype[Any]]:
        """``x`` as an array and the dtype to send it as (see :meth:`infer`)."""
        arr = np.asarray(x)
        if arr.ndim > MAX_RANK:
            raise ValueError(f"input {name!r}: rank {arr.ndim} is above {MAX_RANK}")
        want = next((i.dtype for i in self.inputs if i.name == name), None)
        send = arr.dtype
        if want is not None and want != arr.dtype:
            both_float = _CODES.get(arr.dtype) in _FLOATS and _CODES[want] in _FLOATS
            if both_float or np.can_cast(arr.dtype, want, casting="safe"):
                send = want
        if send not in _CODES:
            raise TypeError(f"input {name!r}: dtype {arr.dtype} is not one uminfer carries ({', '.join(map(str, _CODES))})")
        return arr, send

    def _send(self, kind: int, arrays: list[tuple[str, tuple[npt.NDArray[Any], np.dtype[Any]]]], max_response_bytes: int) -> tuple[int, Any]:
        """Lays out, loans, fills and sends one request; returns its id and the pending response."""
        if self._service.dynamic_config.number_of_servers == 0:
            self._node.try_cleanup_dead_nodes()
            raise ServerGone(f"no server serves {self._service_name}")
        entries = []
        end = 0
        for name, (arr, dtype) in arrays:
            encoded = name.encode("utf-8")
            if len(encoded) > MAX_NAME_LEN:
                raise ValueError(f"input name {name!r} has {len(encoded)} bytes; protocol v2 carries names of at most {MAX_NAME_LEN}")
            offset = -(-end // TENSOR_ALIGN) * TENSOR_ALIGN
            size = arr.size * dtype.itemsize
            entries.append((encoded, dtype, arr, offset, size))
            end = offset + size
        request_id = self._next_id
        self._next_id += 1
        try:
            req = self._port.loan_slice_uninit(end)
        except Exception as e:
            raise UminferError(f"loaning {end} bytes of shared memory: {e!r}") from e
        h = req.user_header().contents
        ctypes.memset(ctypes.addressof(h), 0, ctypes.sizeof(h))
        h.magic, h.version, h.kind, h.count = MAGIC, PROTOCOL_VERSION, kind, len(entries)
        h.request_id, h.max_response_bytes = request_id, max_response_bytes
        base = req.payload_ptr
        pos = 0
        for i, (encoded, dtype, arr, offset, size) in enumerate(entries):
            e = h.tensors[i]
            ctypes.memmove(e.name, encoded, len(encoded))
            e.name_len, e.dtype, e.rank = len(encoded), _CODES[dtype], arr.ndim
            for d in range(MAX_RANK):
                e.shape[d] = arr.shape[d] if d < arr.ndim else 0
            e.offset, e.len = offset, size
            ctypes.memset(base + pos, 0, offset - pos)  # padding: every byte sent is written
            if size:
                dst = _view(base + offset, size, dtype).reshape(arr.shape)
                np.copyto(dst, arr, casting="unsafe")  # the one write of the input: straight into shared memory
                del dst
            pos = offset + size
        try:
            pending = req.assume_init().send()
            self._notifier.notify()
        except Exception as e:
            raise UminferError(f"sending to {self._service_name}: {e!r}") from e
        return request_id, pending

    def _await_response(self, pending: Any, request_id: int, read: Any) -> Any:
        """Spins, then sleeps on the response listener, until the response, a dead server or the timeout."""
        try:
            start = time.monotonic()
            deadline = start + self._timeout
            last_check = start
            while True:
                response = pending.receive()
                if response is None and not pending.is_connected:
                    # The server may have answered and dropped the request between the two calls.
                    response = pending.receive()
                    if response is None:
                        raise ServerGone(f"{self._service_name} dropped the request without answering")
                if response is not None:
                    try:
                        h = response.user_header().contents
                        if h.magic != MAGIC or h.version != PROTOCOL_VERSION:
                            raise UminferError(f"{self._service_name} answered with magic 0x{h.magic:08x} version {h.version}")
                        if h.request_id != request_id:
                            raise UminferError(f"the response to request {h.request_id} arrived for request {request_id}")
                        if h.status != STATUS_OK:
                            message = bytes(h.error[: min(h.error_len, MAX_ERROR_LEN)]).decode("utf-8", errors="replace")
                            raise RemoteError(h.status, message)
                        # iceoryx2 0.10 Python: header.number_of_elements is the payload's length (bytes, for u8).
                        return read(h, response.payload_ptr, response.header.number_of_elements)
                    finally:
                        response.delete()
                now = time.monotonic()
                if now >= deadline:
                    raise Timeout(f"no response from {self._service_name} within {self._timeout:g} s")
                if now - start < _SPIN_S:
                    continue
                if now - last_check >= _LIVENESS_PERIOD_S:
                    last_check = now
                    self._node.try_cleanup_dead_nodes()
                    if self._service.dynamic_config.number_of_servers == 0:
                        raise ServerGone(f"the server of {self._service_name} died")
                self._listener.timed_wait(iox2.Duration.from_secs_f64(min(deadline - now, _WAIT_SLICE_S)))
        finally:
            pending.delete()  # a request given up on is dropped by the server unanswered

    def _read_outputs(
        self, h: UminferResponseHeaderV2, ptr: int, size: int, out: Mapping[str, npt.NDArray[Any]] | None
    ) -> dict[str, npt.NDArray[Any]]:
        """Checks the response's table against its payload and copies each output out of shared memory."""
        if h.count > MAX_TENSORS:
            raise UminferError(f"malformed response: {h.count} table entries")
        result: dict[str, npt.NDArray[Any]] = {}
        for i in range(h.count):
            e = h.tensors[i]
            name = bytes(e.name[: min(e.name_len, MAX_NAME_LEN)]).decode("utf-8", errors="replace")
            dtype = _DTYPES.get(e.dtype)
            shape = tuple(int(d) for d in e.shape[: min(e.rank, MAX_RANK)])
            if dtype is None or e.rank > MAX_RANK or int(np.prod(shape)) * dtype.itemsize != e.len or e.offset + e.len > size:
                raise UminferError(f"malformed response: entry {name!r} does not fit the payload of {size} bytes")
            src = _view(ptr + e.offset, e.len, dtype).reshape(shape)
            dst = None if out is None else out.get(name)
            if dst is None:
                result[name] = src.copy()
            else:
                if dst.dtype != dtype or dst.shape != shape or not dst.flags.writeable:
                    raise ValueError(f"out[{name!r}] must be a writeable {dtype} array of shape {shape}, got {dst.dtype} {dst.shape}")
                np.copyto(dst, src)
                result[name] = dst
        return result

    def close(self) -> None:
        """Releases the ports and the node; idempotent. Later requests raise :class:`UminferError`."""
        if self._closed:
            return
        self._closed = True
        for port in (self._listener, self._notifier, self._port):
            port.delete()
        del self._service, self._node

    def __enter__(self) -> Client:
        """Returns the client itself."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Closes the client."""
        self.close()


def _view(address: int, size: int, dtype: np.dtype[Any]) -> npt.NDArray[Any]:
    """A writable NumPy view of ``size`` bytes at ``address`` (a shared-memory sample) as ``dtype``."""
    return np.ctypeslib.as_array((ctypes.c_uint8 * size).from_address(address)).view(dtype)
