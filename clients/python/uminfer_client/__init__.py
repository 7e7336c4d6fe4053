"""Python client of a ``uminfer serve`` endpoint (shared-memory IPC contract v1).

A server started with ``uminfer serve --name NAME --model PATH`` serves one
TorchScript model as the iceoryx2 request-response service ``uminfer/NAME``
(see ``docs/ipc.md`` in the repository). This module speaks that contract:

* :class:`Client` opens the service with exactly the server's settings, writes
  each input tensor straight into the shared-memory sample iceoryx2 lends it
  (a NumPy view over the sample, no intermediate buffer), notifies the server,
  and waits for the response: a 200 µs spin, then its own response-event
  listener in slices of at most 50 ms, checking every 200 ms that the server
  is still alive.
* :class:`UminferRequestHeaderV1` / :class:`UminferResponseHeaderV1` are the
  wire headers as :mod:`ctypes` structures.
* Failures raise subclasses of :class:`UminferError`: :class:`ServerGone`,
  :class:`Timeout` and :class:`RemoteError`.

Example::

    import numpy as np
    from uminfer_client import Client

    with Client("tiny", timeout=5.0) as client:
        y = client.infer(np.zeros((1, 3, 128, 128), np.float32))
"""

from __future__ import annotations

import ctypes
import os
import time
from types import TracebackType
from typing import Any, Final

import iceoryx2 as iox2
import numpy as np
import numpy.typing as npt

__all__ = [
    "Client",
    "RemoteError",
    "ServerGone",
    "Timeout",
    "UminferError",
    "UminferRequestHeaderV1",
    "UminferResponseHeaderV1",
    "STATUS_OK",
    "STATUS_BAD_REQUEST",
    "STATUS_MODEL_ERROR",
]

MAGIC: Final = 0x554D4946
"""``"UMIF"``: first field of every header."""
PROTOCOL_VERSION: Final = 1
"""Version of the contract this client speaks."""
DTYPE_F32: Final = 1
"""``dtype`` code of float32, the only element type of protocol v1."""
MAX_RANK: Final = 8
"""Highest tensor rank a header can describe."""
MAX_ERROR_LEN: Final = 256
"""Bytes of error text a response can carry."""

STATUS_OK: Final = 0
"""Response status: the payload is the model's output."""
STATUS_BAD_REQUEST: Final = 1
"""Response status: the request was malformed (header, size, shape)."""
STATUS_MODEL_ERROR: Final = 2
"""Response status: the model failed on a well-formed request."""

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


class UminferRequestHeaderV1(ctypes.Structure):
    """Request header (80 bytes, align 8); the payload is the input's float32 elements."""

    _fields_ = [
        ("magic", ctypes.c_uint32),
        ("version", ctypes.c_uint16),
        ("dtype", ctypes.c_uint8),
        ("rank", ctypes.c_uint8),
        ("request_id", ctypes.c_uint64),
        ("shape", ctypes.c_uint64 * MAX_RANK),
    ]

    @staticmethod
    def type_name() -> str:
        """The iceoryx2 type name; equals the Rust header's ``#[type_name]``."""
        return "UminferRequestHeaderV1"


class UminferResponseHeaderV1(ctypes.Structure):
    """Response header (344 bytes, align 8); the payload is the output unless ``status != 0``."""

    _fields_ = [
        ("magic", ctypes.c_uint32),
        ("version", ctypes.c_uint16),
        ("status", ctypes.c_uint16),
        ("dtype", ctypes.c_uint8),
        ("rank", ctypes.c_uint8),
        ("error_len", ctypes.c_uint16),
        ("reserved", ctypes.c_uint32),
        ("request_id", ctypes.c_uint64),
        ("shape", ctypes.c_uint64 * MAX_RANK),
        ("error", ctypes.c_uint8 * MAX_ERROR_LEN),
    ]

    @staticmethod
    def type_name() -> str:
        """The iceoryx2 type name; equals the Rust header's ``#[type_name]``."""
        return "UminferResponseHeaderV1"


assert ctypes.sizeof(UminferRequestHeaderV1) == 80 and ctypes.alignment(UminferRequestHeaderV1) == 8
assert ctypes.sizeof(UminferResponseHeaderV1) == 344 and ctypes.alignment(UminferResponseHeaderV1) == 8


class UminferError(Exception):
    """Base class of every error this client raises about the endpoint."""


class ServerGone(UminferError):
    """No live server serves the endpoint (never started, stopped, or died while waiting)."""


class Timeout(UminferError):
    """The response did not arrive within the client's timeout."""


class RemoteError(UminferError):
    """The server answered with an error status.

    Attributes:
        status: :data:`STATUS_BAD_REQUEST` (1) or :data:`STATUS_MODEL_ERROR` (2).
        message: the server's explanation.

    """

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        kind = {STATUS_BAD_REQUEST: "bad request", STATUS_MODEL_ERROR: "model error"}.get(status, "unknown status")
        super().__init__(f"{kind} (status {status}): {message}")


class Client:
    """A connection to endpoint ``uminfer/NAME``.

    The constructor waits up to ``timeout`` seconds for a live server, then
    raises :class:`ServerGone`; ``timeout`` also bounds every request. A client
    sends one request at a time and is not thread-safe: use one per thread.
    """

    def __init__(self, name: str, timeout: float = 10.0) -> None:
        """Connects to endpoint ``name`` (1-200 characters of ``[A-Za-z0-9-_.]``)."""
        if not 1 <= len(name) <= 200 or not set(name) <= _VALID_NAME_CHARS:
            raise ValueError(f"endpoint name {name!r} must be 1 to 200 characters of [A-Za-z0-9-_.]")
        if not timeout > 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        self._service_name = f"uminfer/{name}"
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
                self._event_service(f"{self._service_name}/requests", _MAX_REQUEST_NOTIFIERS, _MAX_REQUEST_LISTENERS)
                .notifier_builder()
                .create()
            )
            # The server wakes the listener named after this client's id (Rust `format!("{}", id)` = lowercase hex).
            listener_name = iox2.PortName.new(format(self._port.id.value, "x"))
            self._listener = (
                self._event_service(f"{self._service_name}/responses", _MAX_RESPONSE_NOTIFIERS, _MAX_RESPONSE_LISTENERS)
                .listener_builder()
                .name(listener_name)
                .create()
            )
        except Exception as e:
            raise UminferError(f"connecting to {self._service_name}: {e!r}") from e

    def _open_service(self, deadline: float) -> Any:
        """Opens ``uminfer/NAME`` once it has a live server; :class:`ServerGone` at ``deadline``."""
        name = iox2.ServiceName.new(self._service_name)
        service: Any = None
        while True:
            if service is None:
                try:
                    service = (
                        self._node.service_builder(name)
                        .request_response(iox2.Slice[ctypes.c_float], iox2.Slice[ctypes.c_float])
                        .request_header(UminferRequestHeaderV1)
                        .response_header(UminferResponseHeaderV1)
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
                    "start one with `uminfer serve --name ...`)"
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

    def infer(self, x: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """Runs the model on ``x`` and returns its output as a new float32 array.

        ``x`` (rank 1 to 8) is converted to float32 while it is written into
        shared memory; a dtype that cannot be converted raises :class:`TypeError`.
        """
        return self._request(x, None)

    def infer_into(self, x: npt.ArrayLike, out: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Like :meth:`infer`, but copies the output into ``out`` (float32, the output's shape) and returns it.

        The only copy of the output is the one from the shared-memory response
        into ``out``: no array is allocated per request.
        """
        if not isinstance(out, np.ndarray) or out.dtype != np.float32 or not out.flags.writeable:
            raise TypeError("out must be a writeable float32 numpy.ndarray")
        return self._request(x, out)

    def _request(self, x: npt.ArrayLike, out: npt.NDArray[np.float32] | None) -> npt.NDArray[np.float32]:
        """Sends one request and waits for its response (see the module docstring)."""
        if self._closed:
            raise UminferError(f"the client of {self._service_name} is closed")
        src = _checked_input(x)
        if self._service.dynamic_config.number_of_servers == 0:
            self._node.try_cleanup_dead_nodes()
            raise ServerGone(f"no server serves {self._service_name}")
        request_id = self._next_id
        self._next_id += 1
        try:
            req = self._port.loan_slice_uninit(src.size)
        except Exception as e:
            raise UminferError(f"loaning {src.size} floats of shared memory: {e!r}") from e
        h = req.user_header().contents
        h.magic = MAGIC
        h.version = PROTOCOL_VERSION
        h.dtype = DTYPE_F32
        h.rank = src.ndim
        h.request_id = request_id
        for i in range(MAX_RANK):
            h.shape[i] = src.shape[i] if i < src.ndim else 0
        # iceoryx2 0.10 Python: Slice.len() counts bytes (issue #1533); header.number_of_elements is right.
        dst = _f32_view(req.payload_ptr, req.header.number_of_elements).reshape(src.shape)
        np.copyto(dst, src, casting="same_kind")  # the one write of the input: straight into shared memory
        del dst
        try:
            pending = req.assume_init().send()
            self._notifier.notify()
        except Exception as e:
            raise UminferError(f"sending to {self._service_name}: {e!r}") from e
        try:
            return self._await_response(pending, request_id, out)
        finally:
            pending.delete()  # a request given up on is dropped by the server unanswered

    def _await_response(
        self, pending: Any, request_id: int, out: npt.NDArray[np.float32] | None
    ) -> npt.NDArray[np.float32]:
        """Spins, then sleeps on the response listener, until the response, a dead server or the timeout."""
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
                    return self._read_response(response, request_id, out)
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

    def _read_response(
        self, response: Any, request_id: int, out: npt.NDArray[np.float32] | None
    ) -> npt.NDArray[np.float32]:
        """Checks a response's header and copies its payload out of shared memory."""
        h = response.user_header().contents
        if h.magic != MAGIC or h.version != PROTOCOL_VERSION:
            raise UminferError(f"{self._service_name} answered with magic 0x{h.magic:08x} version {h.version}")
        if h.request_id != request_id:
            raise UminferError(f"the response to request {h.request_id} arrived for request {request_id}")
        if h.status != STATUS_OK:
            message = bytes(h.error[: min(h.error_len, MAX_ERROR_LEN)]).decode("utf-8", errors="replace")
            raise RemoteError(h.status, message)
        if h.dtype != DTYPE_F32 or not 1 <= h.rank <= MAX_RANK:
            raise UminferError(f"unsupported response: dtype code {h.dtype}, rank {h.rank}")
        shape = tuple(int(d) for d in h.shape[: h.rank])
        count = response.header.number_of_elements
        if int(np.prod(shape)) != count:
            raise UminferError(f"the response's shape {shape} does not match its {count} elements")
        src = _f32_view(response.payload_ptr, count).reshape(shape)
        if out is None:
            return src.copy()
        if out.shape != shape:
            raise ValueError(f"out has shape {out.shape} but the output's shape is {shape}")
        np.copyto(out, src)
        return out

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


def _checked_input(x: npt.ArrayLike) -> npt.NDArray[Any]:
    """``x`` as an array that can be written as float32 with rank 1..8, or :class:`TypeError`/:class:`ValueError`."""
    arr = np.asarray(x)
    if arr.dtype != np.float32 and not np.can_cast(arr.dtype, np.float32, casting="same_kind"):
        raise TypeError(f"input dtype {arr.dtype} cannot be converted to float32 (protocol v1 carries float32)")
    if not 1 <= arr.ndim <= MAX_RANK:
        raise ValueError(f"input rank {arr.ndim} is outside 1..{MAX_RANK} (shape {arr.shape})")
    return arr


def _f32_view(address: int, count: int) -> npt.NDArray[np.float32]:
    """A writable NumPy view of ``count`` float32 elements at ``address`` (a shared-memory sample)."""
    return np.ctypeslib.as_array((ctypes.c_float * count).from_address(address))
