"""The HTTP transport of the provider clients: HTTP/1.1 keep-alive over asyncio protocols.

httpx stays the client API (requests, responses, timeouts, errors); this replaces only
what sits under it. httpx's own transport (httpcore) spends most of its time in pool
bookkeeping once hundreds of calls are in flight, and an aiohttp session under httpx still
costs as much again as httpx itself (``python -m bench.transports`` measures the three;
docs/performance.md has the figures).

What it does, and no more, because provider calls need no more:

- one pool per transport (one per provider account): at most ``max_connections`` open
  connections, idle ones reused last-in first-out and dropped after ``keepalive_seconds``;
- TLS through an ``ssl.SSLContext`` (httpx's default one unless given), plain HTTP/1.1, no
  proxies (httpx routes proxied URLs to its own transports), no HTTP/2, no upgrades;
- request bodies sent whole, response bodies read whole (capped at ``max_response_bytes``):
  Content-Length, chunked or close-delimited;
- httpx's per-request ``timeout`` extension: ``pool`` (waiting for a connection slot),
  ``connect``, ``read`` (longest silence while an answer is due); writes are buffered by
  asyncio, as bodies are small;
- failures raised as the httpx exceptions they are (``ConnectError``, ``ConnectTimeout``,
  ``ReadTimeout``, ``PoolTimeout``, ``RemoteProtocolError``...), so ``providers.http.send``
  maps them to our taxonomy exactly as it does for httpx's own transport.

A connection whose exchange did not finish cleanly (error, timeout, cancellation) is
closed, never reused.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from dataclasses import dataclass
from typing import cast

import httpx

KEEPALIVE_SECONDS = 30.0
# A provider answer is a small JSON document; anything near this is not one.
MAX_RESPONSE_BYTES = 16 * 1024 * 1024
_MAX_HEAD_BYTES = 64 * 1024
_MAX_CHUNK_LINE = 4096

Origin = tuple[bytes, bytes, int]
_IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})


class _NoAnswer(httpx.RemoteProtocolError):
    """The connection closed before a single byte of the answer arrived."""


class HttpTransport(httpx.AsyncBaseTransport):
    """HTTP/1.1 keep-alive connections of one provider account."""

    def __init__(
        self,
        *,
        max_connections: int,
        keepalive_seconds: float = KEEPALIVE_SECONDS,
        ssl_context: ssl.SSLContext | None = None,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self._max_connections = max_connections
        self._keepalive_seconds = keepalive_seconds
        self._ssl_context = ssl_context
        self._max_response_bytes = max_response_bytes
        self._slots: asyncio.Semaphore | None = None
        self._idle: dict[Origin, deque[_Connection]] = {}
        self._open: set[_Connection] = set()
        self._closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._closed:
            raise RuntimeError("the transport is closed")
        timeouts: dict[str, float | None] = request.extensions.get("timeout") or {}
        url = request.url
        scheme = url.raw_scheme
        if scheme not in (b"http", b"https"):
            raise httpx.UnsupportedProtocol(f"unsupported URL scheme {url.scheme!r}")
        origin = (scheme, url.raw_host, url.port or (443 if scheme == b"https" else 80))
        message = _request_bytes(request, await request.aread())
        head_only = request.method == "HEAD"

        slots = self._slots or self._new_slots()
        if slots.locked():
            try:
                async with asyncio.timeout(timeouts.get("pool")):
                    await slots.acquire()
            except TimeoutError as exc:
                raise httpx.PoolTimeout("no connection free in time", request=request) from exc
        else:
            await slots.acquire()
        # A kept-alive connection the server closed just as we wrote gets no answer; the
        # call is repeated once on a new connection when repeating it is safe.
        may_repeat = request.method in _IDEMPOTENT or "idempotency-key" in request.headers
        connection: _Connection | None = None
        try:
            while True:
                connection = self._checkout(origin)
                reused = connection is not None
                if connection is None:
                    connection = await self._connect(origin, request, timeouts.get("connect"))
                try:
                    answer = await connection.exchange(
                        message, head_only, timeouts.get("read"), request
                    )
                except _NoAnswer:
                    if not (reused and may_repeat):
                        raise
                    may_repeat = False
                    self._discard(connection)
                    connection = None
                    continue
                break
            if connection.reusable:
                connection.idle_since = time.monotonic()
                self._idle.setdefault(origin, deque()).append(connection)
                connection = None
        finally:
            if connection is not None:
                self._discard(connection)
            slots.release()
        status, reason, headers, body = answer
        return httpx.Response(
            status_code=status,
            headers=headers,
            stream=httpx.ByteStream(body),
            request=request,
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": reason},
        )

    def _new_slots(self) -> asyncio.Semaphore:
        # Made in the running loop on first use: the transport may be built before it.
        self._slots = asyncio.Semaphore(self._max_connections)
        return self._slots

    def _checkout(self, origin: Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        expired_before = time.monotonic() - self._keepalive_seconds
        while idle:
            connection = idle.pop()
            if connection.usable and connection.idle_since > expired_before:
                return connection
            self._discard(connection)
        return None

    async def _connect(
        self, origin: Origin, request: httpx.Request, timeout: float | None
    ) -> _Connection:
        self._make_room()
        scheme, host, port = origin
        hostname = host.decode("ascii")
        tls = self._ssl_context_for() if scheme == b"https" else None
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                _, connection = await loop.create_connection(
                    lambda: _Connection(self._max_response_bytes),
                    hostname,
                    port,
                    ssl=tls,
                    server_hostname=hostname if tls is not None else None,
                )
        except TimeoutError as exc:
            raise httpx.ConnectTimeout(
                f"connect to {hostname}:{port} timed out", request=request
            ) from exc
        except OSError as exc:  # refused, unreachable, DNS failure, TLS handshake (SSLError)
            raise httpx.ConnectError(
                f"connect to {hostname}:{port} failed: {type(exc).__name__}", request=request
            ) from exc
        self._open.add(connection)
        return connection

    def _ssl_context_for(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            # httpx's default: certifi's CA bundle, hostname checks on.
            self._ssl_context = httpx.create_ssl_context(trust_env=False)
        return self._ssl_context

    def _make_room(self) -> None:
        """Close the oldest idle connection (of any origin) when the limit is reached."""
        if len(self._open) < self._max_connections:
            return
        oldest: tuple[float, Origin] | None = None
        for origin, idle in self._idle.items():
            if idle and (oldest is None or idle[0].idle_since < oldest[0]):
                oldest = (idle[0].idle_since, origin)
        if oldest is not None:
            self._discard(self._idle[oldest[1]].popleft())

    def _discard(self, connection: _Connection) -> None:
        self._open.discard(connection)
        connection.close()

    async def aclose(self) -> None:
        self._closed = True
        for connection in list(self._open):
            self._discard(connection)
        self._idle.clear()


def _request_bytes(request: httpx.Request, body: bytes) -> bytes:
    """The request line, headers and body as they go on the wire."""
    lines = [f"{request.method} ".encode("ascii"), request.url.raw_path, b" HTTP/1.1\r\n"]
    for name, value in request.headers.raw:
        if b"\r" in value or b"\n" in value or b"\r" in name or b"\n" in name:
            # A credential or id with a line break would smuggle a header in.
            raise httpx.LocalProtocolError(f"header {name!r} holds a line break")
        if name.lower() == b"transfer-encoding":
            # A streamed body was read whole above: it goes with a length instead.
            lines += (b"Content-Length: ", str(len(body)).encode("ascii"), b"\r\n")
            continue
        lines += (name, b": ", value, b"\r\n")
    lines.append(b"\r\n")
    if body:
        lines.append(body)
    return b"".join(lines)


_HEAD = 0
_LENGTH = 1
_CHUNK_SIZE = 2
_CHUNK_DATA = 3
_TRAILERS = 4
_UNTIL_CLOSE = 5

Answer = tuple[int, bytes, list[tuple[bytes, bytes]], bytes]


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection; one exchange at a time."""

    def __init__(self, max_body: int) -> None:
        self._max_body = max_body
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._waiter: asyncio.Future[Answer] | None = None
        self._request: httpx.Request | None = None
        self._state = _HEAD
        self._head_only = False
        self._status = 0
        self._reason = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._body = bytearray()
        self._remaining = 0
        self._keep_alive = True
        self._last_data = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._lost = False
        self.idle_since = 0.0

    # asyncio callbacks -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport; uvloop's implement the interface without subclassing it.
        self._transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        if self._waiter is None or self._waiter.done():
            return
        if self._state == _UNTIL_CLOSE:
            self._complete()
        elif self._state == _HEAD and not self._buffer:
            self._fail(_NoAnswer("server disconnected without an answer"))
        else:
            self._fail(httpx.RemoteProtocolError("server disconnected mid-answer"))

    def eof_received(self) -> bool:
        return False  # close our side too; connection_lost decides what the EOF meant

    def data_received(self, data: bytes) -> None:
        if self._waiter is None or self._waiter.done():
            # Bytes nobody asked for: the connection is out of step, never reuse it.
            self._keep_alive = False
            self.close()
            return
        self._last_data = time.monotonic()
        self._buffer += data
        try:
            self._parse()
        except httpx.RemoteProtocolError as exc:
            self._fail(exc)

    # the exchange ----------------------------------------------------------------------

    @property
    def usable(self) -> bool:
        return not self._lost and self._transport is not None and not self._transport.is_closing()

    @property
    def reusable(self) -> bool:
        return self._keep_alive and self.usable and not self._buffer

    async def exchange(
        self, message: bytes, head_only: bool, read_timeout: float | None, request: httpx.Request
    ) -> Answer:
        assert self._transport is not None
        loop = asyncio.get_running_loop()
        self._waiter = waiter = loop.create_future()
        self._request = request
        self._state = _HEAD
        self._head_only = head_only
        self._headers = []
        self._body = bytearray()
        self._keep_alive = True
        self._last_data = time.monotonic()
        self._transport.write(message)
        if read_timeout is not None:
            self._timer = loop.call_at(
                self._last_data + read_timeout, self._check_silence, read_timeout
            )
        try:
            answer: Answer = await waiter
            return answer
        finally:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._waiter = None
            self._request = None

    def _check_silence(self, read_timeout: float) -> None:
        self._timer = None
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        due = self._last_data + read_timeout
        if time.monotonic() >= due:
            self._fail(httpx.ReadTimeout("no answer in time", request=self._request))
            self.close()
        else:
            self._timer = asyncio.get_running_loop().call_at(due, self._check_silence, read_timeout)

    def _fail(self, exc: Exception) -> None:
        self._keep_alive = False
        if self._waiter is not None and not self._waiter.done():
            if isinstance(exc, httpx.RequestError) and self._request is not None:
                exc.request = self._request
            self._waiter.set_exception(exc)

    def _complete(self) -> None:
        if self._buffer and self._state != _UNTIL_CLOSE:
            self._keep_alive = False  # more than one answer came: out of step
        self._state = _HEAD
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result((self._status, self._reason, self._headers, bytes(self._body)))

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    # parsing ---------------------------------------------------------------------------

    def _parse(self) -> None:
        """Consume the buffer as far as it goes; each step returns False to wait for data."""
        while self._waiter is not None and not self._waiter.done():
            step = _STEPS[self._state]
            if not step(self):
                return

    def _head(self) -> bool:
        buffer = self._buffer
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(buffer) > _MAX_HEAD_BYTES:
                raise httpx.RemoteProtocolError("response head too large")
            return False
        head = _parse_head(bytes(buffer[:end]))
        del buffer[: end + 4]
        if 100 <= head.status < 200:
            if head.status == 101:
                raise httpx.RemoteProtocolError("protocol upgrades are not supported")
            return True  # an interim answer; the real one follows
        self._status, self._reason, self._headers = head.status, head.reason, head.headers
        self._keep_alive = head.keep_alive
        if self._head_only or head.status in (204, 304):
            self._complete()
        elif head.chunked is not None:
            self._state = _CHUNK_SIZE if head.chunked else _UNTIL_CLOSE
            if not head.chunked or head.length is not None:
                # Not chunked: the body ends with the connection. Both framings at once: a
                # smuggling attempt or a broken proxy; either way, never reuse (RFC 9112 6.3).
                self._keep_alive = False
        elif head.length is not None:
            self._grow(head.length)
            self._remaining = head.length
            self._state = _LENGTH
        else:
            self._state = _UNTIL_CLOSE
            self._keep_alive = False
        return True

    def _fixed_length(self) -> bool:
        if len(self._buffer) < self._remaining:
            return False
        self._body += self._buffer[: self._remaining]
        del self._buffer[: self._remaining]
        self._complete()
        return True

    def _chunk_size(self) -> bool:
        buffer = self._buffer
        end = buffer.find(b"\r\n")
        if end < 0:
            if len(buffer) > _MAX_CHUNK_LINE:
                raise httpx.RemoteProtocolError("chunk size line too long")
            return False
        size_field = bytes(buffer[:end]).split(b";", 1)[0].strip()
        del buffer[: end + 2]
        if not size_field or any(c not in _HEX_DIGITS for c in size_field):
            raise httpx.RemoteProtocolError("bad chunk size")
        size = int(size_field, 16)
        if size == 0:
            self._state = _TRAILERS
        else:
            self._grow(size)
            self._remaining = size
            self._state = _CHUNK_DATA
        return True

    def _chunk_data(self) -> bool:
        buffer, size = self._buffer, self._remaining
        if len(buffer) < size + 2:
            return False
        if buffer[size : size + 2] != b"\r\n":
            raise httpx.RemoteProtocolError("chunk not followed by CRLF")
        self._body += buffer[:size]
        del buffer[: size + 2]
        self._state = _CHUNK_SIZE
        return True

    def _trailers(self) -> bool:
        buffer = self._buffer
        end = buffer.find(b"\r\n")
        if end < 0:
            if len(buffer) > _MAX_HEAD_BYTES:
                raise httpx.RemoteProtocolError("trailers too large")
            return False
        del buffer[: end + 2]
        if end == 0:
            self._complete()
        return True

    def _until_close(self) -> bool:
        self._grow(len(self._buffer))
        self._body += self._buffer
        self._buffer.clear()
        return False

    def _grow(self, more: int) -> None:
        if len(self._body) + more > self._max_body:
            raise httpx.RemoteProtocolError(f"response body over {self._max_body} bytes")


_STEPS = {
    _HEAD: _Connection._head,
    _LENGTH: _Connection._fixed_length,
    _CHUNK_SIZE: _Connection._chunk_size,
    _CHUNK_DATA: _Connection._chunk_data,
    _TRAILERS: _Connection._trailers,
    _UNTIL_CLOSE: _Connection._until_close,
}
_HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")


@dataclass(frozen=True, slots=True)
class _Head:
    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    length: int | None
    # None: no Transfer-Encoding; else whether its last coding is chunked.
    chunked: bool | None
    keep_alive: bool


def _parse_head(head: bytes) -> _Head:
    """The status line and header fields of an answer."""
    lines = head.split(b"\r\n")
    version, _, rest = lines[0].partition(b" ")
    code, _, reason = rest.partition(b" ")
    if not version.startswith(b"HTTP/1.") or len(code) != 3 or not code.isdigit():
        raise httpx.RemoteProtocolError("malformed status line")
    headers: list[tuple[bytes, bytes]] = []
    length: int | None = None
    chunked: bool | None = None
    keep_alive = version == b"HTTP/1.1"
    for line in lines[1:]:
        if line[:1] in (b" ", b"\t") and headers:
            # An obsolete folded line continues the previous field (RFC 9112 5.2).
            name, value = headers[-1]
            headers[-1] = (name, value + b" " + line.strip())
            continue
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip():
            raise httpx.RemoteProtocolError("malformed header line")
        value = value.strip()
        headers.append((name, value))
        lowered = name.lower()
        if lowered == b"content-length":
            if not value.isdigit() or (length is not None and int(value) != length):
                raise httpx.RemoteProtocolError("bad Content-Length")
            length = int(value)
        elif lowered == b"transfer-encoding":
            chunked = value.lower().rsplit(b",", 1)[-1].strip() == b"chunked"
        elif lowered == b"connection":
            tokens = {token.strip() for token in value.lower().split(b",")}
            if b"close" in tokens:
                keep_alive = False
            elif b"keep-alive" in tokens:
                keep_alive = True
    return _Head(int(code), reason, headers, length, chunked, keep_alive)
