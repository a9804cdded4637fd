"""The provider HTTP transport against real local servers: aiohttp's, and raw sockets for
answers aiohttp would never send."""

from __future__ import annotations

import asyncio
import gzip
import shutil
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import orjson
import pytest
import uvloop
from aiohttp import web
from aiohttp.test_utils import TestServer

from consumer.core.errors import NetworkError, ProviderTimeoutError
from consumer.providers.http import send
from consumer.providers.transport import HttpTransport
from consumer.tools.embedded_broker import free_port


class Server:
    """A loopback aiohttp server; remembers the peers that called and the busiest moment."""

    def __init__(self) -> None:
        self.peers: list[tuple[str, int]] = []
        self.active = 0
        self.most_active = 0
        self.app = web.Application()
        self.app.router.add_route("*", "/echo", self._echo)
        self.app.router.add_get("/slow", self._slow)
        self.app.router.add_get("/busy", self._busy)
        self.app.router.add_get("/drop", self._drop)
        self.app.router.add_get("/gzip", self._gzip)
        self.app.router.add_get("/teapot", self._teapot)
        self.app.router.add_get("/chunked", self._chunked)
        self.app.router.add_get("/big", self._big)

    async def _echo(self, request: web.Request) -> web.Response:
        assert request.transport is not None
        self.peers.append(request.transport.get_extra_info("peername"))
        body = await request.read()
        echoed = {
            "method": request.method,
            "path_qs": request.path_qs,
            "headers": [[k, v] for k, v in request.headers.items()],
            "body": body.decode(),
        }
        return web.Response(body=orjson.dumps(echoed), content_type="application/json")

    async def _slow(self, request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.Response(text="late")

    async def _busy(self, request: web.Request) -> web.Response:
        self.active += 1
        self.most_active = max(self.most_active, self.active)
        await asyncio.sleep(0.05)
        self.active -= 1
        return web.Response(text="ok")

    async def _drop(self, request: web.Request) -> web.Response:
        assert request.transport is not None
        request.transport.close()
        await asyncio.sleep(1)
        return web.Response(text="never sent")

    async def _gzip(self, request: web.Request) -> web.Response:
        return web.Response(
            body=gzip.compress(b'{"zipped": true}'),
            headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
        )

    async def _teapot(self, request: web.Request) -> web.Response:
        return web.Response(status=418, reason="I'm a teapot", headers={"X-Request-Id": "r-9"})

    async def _chunked(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for part in (b'{"parts": ', b"[1, 2, ", b"3]}"):
            await response.write(part)
            await asyncio.sleep(0.01)
        await response.write_eof()
        return response

    async def _big(self, request: web.Request) -> web.Response:
        return web.Response(body=b"x" * 100_000)


@pytest.fixture
async def server() -> AsyncIterator[tuple[Server, str]]:
    state = Server()
    test_server = TestServer(state.app, host="127.0.0.1")
    await test_server.start_server()
    try:
        yield state, f"http://127.0.0.1:{test_server.port}"
    finally:
        await test_server.close()


RawHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
async def raw_server() -> AsyncIterator[Callable[[RawHandler], Awaitable[str]]]:
    """Serve a hand-written handler on a loopback port: for answers aiohttp would not send."""
    servers: list[asyncio.Server] = []

    async def start(handler: RawHandler) -> str:
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        servers.append(server)
        return f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


def client(max_connections: int = 8, timeout: float = 5.0, **options: object) -> httpx.AsyncClient:
    transport = HttpTransport(max_connections=max_connections, **options)  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=transport, timeout=timeout)


async def test_request_line_headers_and_body_arrive_as_httpx_built_them(
    server: tuple[Server, str],
) -> None:
    _, base = server
    async with client() as http:
        response = await http.post(
            f"{base}/echo",
            params={"by": "key", "q": "a b/ü"},
            json={"reason": "changed mind"},
            headers={"Idempotency-Key": "k-1", "Authorization": "Bearer t"},
        )

    echoed = response.json()
    headers = {k.lower(): v for k, v in echoed["headers"]}
    assert response.status_code == 200
    assert echoed["method"] == "POST"
    assert echoed["path_qs"] == "/echo?by=key&q=a+b%2F%C3%BC"
    assert orjson.loads(echoed["body"]) == {"reason": "changed mind"}
    assert headers["idempotency-key"] == "k-1"
    assert headers["authorization"] == "Bearer t"
    assert headers["content-type"] == "application/json"
    assert headers["content-length"] == str(len(echoed["body"]))
    assert headers["host"] == base.removeprefix("http://")
    assert headers["user-agent"].startswith("python-httpx/")


async def test_a_form_body_and_an_empty_put_are_sent_as_httpx_encodes_them(
    server: tuple[Server, str],
) -> None:
    _, base = server
    async with client() as http:
        form = (await http.post(f"{base}/echo", data={"grant_type": "client_credentials"})).json()
        put = (await http.put(f"{base}/echo")).json()

    form_headers = {k.lower(): v for k, v in form["headers"]}
    assert form_headers["content-type"] == "application/x-www-form-urlencoded"
    assert form["body"] == "grant_type=client_credentials"
    assert put["method"] == "PUT"
    assert put["body"] == ""


async def test_a_streamed_request_body_is_sent_with_a_length(server: tuple[Server, str]) -> None:
    _, base = server

    async def parts() -> AsyncIterator[bytes]:
        yield b"one,"
        yield b"two"

    async with client() as http:
        echoed = (await http.post(f"{base}/echo", content=parts())).json()

    headers = {k.lower(): v for k, v in echoed["headers"]}
    assert echoed["body"] == "one,two"
    assert headers["content-length"] == "7"
    assert "transfer-encoding" not in headers


async def test_status_reason_and_response_headers_reach_httpx(
    server: tuple[Server, str],
) -> None:
    _, base = server
    async with client() as http:
        response = await http.get(f"{base}/teapot")

    assert response.status_code == 418
    assert response.reason_phrase == "I'm a teapot"
    assert response.headers["x-request-id"] == "r-9"
    assert response.http_version == "HTTP/1.1"


async def test_compressed_chunked_and_large_bodies_arrive_whole(
    server: tuple[Server, str],
) -> None:
    _, base = server
    async with client() as http:
        zipped = await http.get(f"{base}/gzip")
        chunked = await http.get(f"{base}/chunked")
        big = await http.get(f"{base}/big")
        head = await http.head(f"{base}/big")
        after = await http.get(f"{base}/echo")

    assert zipped.json() == {"zipped": True}
    assert chunked.json() == {"parts": [1, 2, 3]}
    assert big.content == b"x" * 100_000
    assert head.status_code == 200
    assert head.content == b""
    assert after.status_code == 200


async def test_connections_are_kept_alive_between_calls(server: tuple[Server, str]) -> None:
    state, base = server
    async with client() as http:
        for _ in range(5):
            await http.get(f"{base}/echo")

    assert len(set(state.peers)) == 1


def test_calls_run_on_uvloop_whose_transports_do_not_subclass_asyncios() -> None:
    async def calls() -> tuple[list[int], int]:
        state = Server()
        test_server = TestServer(state.app, host="127.0.0.1")
        await test_server.start_server()
        url = str(test_server.make_url("/echo"))
        try:
            async with client() as http:
                codes = [(await http.get(url)).status_code, (await http.post(url)).status_code]
        finally:
            await test_server.close()
        return codes, len(set(state.peers))

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert runner.run(calls()) == ([200, 200], 1)


async def test_idle_connections_expire(server: tuple[Server, str]) -> None:
    state, base = server
    async with client(keepalive_seconds=0.0) as http:
        for _ in range(3):
            await http.get(f"{base}/echo")

    assert len(set(state.peers)) == 3


async def test_no_more_connections_than_the_limit(server: tuple[Server, str]) -> None:
    state, base = server
    async with client(max_connections=3) as http:
        answers = await asyncio.gather(*(http.get(f"{base}/busy") for _ in range(12)))

    assert {a.status_code for a in answers} == {200}
    assert state.most_active == 3


async def test_the_read_timeout_is_a_provider_timeout(server: tuple[Server, str]) -> None:
    _, base = server
    async with client() as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.get(f"{base}/slow", timeout=0.2)
        with pytest.raises(ProviderTimeoutError, match="probe: no answer in time"):
            await send(http, "GET", f"{base}/slow", what="probe", http_timeout=0.2, headers={})
        assert (await http.get(f"{base}/echo")).status_code == 200


async def test_an_answer_that_trickles_in_is_not_timed_out(
    raw_server: Callable[[RawHandler], Awaitable[str]],
) -> None:
    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n")
        for byte in b"abcd":
            await asyncio.sleep(0.15)
            writer.write(bytes([byte]))
        await writer.drain()
        writer.close()

    base = await raw_server(trickle)
    async with client() as http:
        response = await http.get(f"{base}/", timeout=0.4)

    assert response.content == b"abcd"


async def test_waiting_for_a_free_connection_is_bounded_by_the_pool_timeout(
    server: tuple[Server, str],
) -> None:
    _, base = server
    async with client(max_connections=1) as http:
        blocker = asyncio.create_task(http.get(f"{base}/slow"))
        await asyncio.sleep(0.1)
        with pytest.raises(httpx.PoolTimeout):
            await http.get(f"{base}/echo", timeout=httpx.Timeout(5, pool=0.2))
        blocker.cancel()
        with pytest.raises(asyncio.CancelledError):
            await blocker
        # The cancelled call gave its slot back.
        assert (await http.get(f"{base}/echo")).status_code == 200


async def test_a_refused_connection_is_a_network_error() -> None:
    url = f"http://127.0.0.1:{free_port()}/"
    async with client() as http:
        with pytest.raises(httpx.ConnectError):
            await http.get(url)
        with pytest.raises(NetworkError, match="probe: ConnectError"):
            await send(http, "GET", url, what="probe", http_timeout=1, headers={})


async def test_a_connect_timeout_is_a_provider_timeout() -> None:
    # A listening socket whose backlog is full leaves further connects hanging.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = []
        try:
            for _ in range(8):
                filler = socket.socket()
                filler.setblocking(False)
                filler.connect_ex(("127.0.0.1", port))
                fillers.append(filler)
            async with client() as http:
                with pytest.raises(ProviderTimeoutError):
                    await send(
                        http,
                        "GET",
                        f"http://127.0.0.1:{port}/",
                        what="probe",
                        http_timeout=0.3,
                        headers={},
                    )
        finally:
            for filler in fillers:
                filler.close()


async def test_a_connection_dropped_before_the_answer_is_a_network_error(
    server: tuple[Server, str],
) -> None:
    _, base = server
    async with client() as http:
        with pytest.raises(httpx.RemoteProtocolError):
            await http.get(f"{base}/drop")
        with pytest.raises(NetworkError):
            await send(http, "GET", f"{base}/drop", what="probe", http_timeout=1, headers={})


async def test_a_kept_alive_connection_closed_by_the_server_is_replaced_once(
    raw_server: Callable[[RawHandler], Awaitable[str]],
) -> None:
    connections = 0

    async def one_answer_per_connection(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        # Answers once, then reads the next request and hangs up without answering: what a
        # server closing an idle connection looks like when our request crosses its FIN.
        nonlocal connections
        connections += 1
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await read_request(reader)
        writer.close()

    base = await raw_server(one_answer_per_connection)
    async with client() as http:
        first = await http.get(f"{base}/")
        second = await http.put(f"{base}/")
        with pytest.raises(httpx.RemoteProtocolError):
            # Not repeated: a POST without an Idempotency-Key might have been acted on.
            await http.post(f"{base}/", content=b"x")

    assert (first.content, second.content) == (b"ok", b"ok")
    assert connections == 2


async def test_a_body_that_ends_with_the_connection(
    raw_server: Callable[[RawHandler], Awaitable[str]],
) -> None:
    async def close_delimited(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall of ")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"it")
        writer.close()

    base = await raw_server(close_delimited)
    async with client() as http:
        response = await http.get(f"{base}/")

    assert response.status_code == 200
    assert response.text == "all of it"


@pytest.mark.parametrize(
    "answer",
    [
        b"HTCPCP/1.0 200 OK\r\n\r\n",
        b"HTTP/1.1 20 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 999\r\n\r\n",
    ],
    ids=["not-http", "bad-status", "bad-header", "two-lengths", "bad-chunk", "too-big"],
)
async def test_a_malformed_answer_is_a_network_error(
    raw_server: Callable[[RawHandler], Awaitable[str]], answer: bytes
) -> None:
    async def broken(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer)
        await writer.drain()
        await asyncio.sleep(0.5)
        writer.close()

    base = await raw_server(broken)
    async with client(max_response_bytes=100) as http:
        with pytest.raises(httpx.RemoteProtocolError):
            await http.get(f"{base}/")
        with pytest.raises(NetworkError):
            await send(http, "GET", f"{base}/", what="probe", http_timeout=1, headers={})


async def test_a_header_value_with_a_line_break_is_never_sent(server: tuple[Server, str]) -> None:
    state, base = server
    async with client() as http:
        request = http.build_request("GET", f"{base}/echo")
        request.headers["API-Key"] = "secret\r\nX-Evil: 1"
        with pytest.raises(httpx.LocalProtocolError):
            await http.send(request)

    assert state.peers == []


async def test_closing_the_client_closes_its_connections(
    raw_server: Callable[[RawHandler], Awaitable[str]],
) -> None:
    hung_up = asyncio.Event()

    async def keep_alive(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await reader.read()  # until the client hangs up
        hung_up.set()
        writer.close()

    base = await raw_server(keep_alive)
    transport = HttpTransport(max_connections=2)
    async with httpx.AsyncClient(transport=transport) as http:
        assert (await http.get(f"{base}/")).text == "ok"
        await asyncio.sleep(0.05)
        assert not hung_up.is_set(), "kept alive while the client is open"

    await asyncio.wait_for(hung_up.wait(), timeout=5)
    with pytest.raises(RuntimeError, match="closed"):
        await transport.handle_async_request(httpx.Request("GET", f"{base}/"))


async def test_closing_an_unused_transport_is_harmless() -> None:
    transport = HttpTransport(max_connections=2)
    await transport.aclose()
    await transport.aclose()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            *(openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


async def test_tls_with_the_account_trust_and_never_without_it(
    certificate: tuple[Path, Path],
) -> None:
    cert, key = certificate
    state = Server()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    runner = web.AppRunner(state.app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=server_tls).start()
    url = f"https://localhost:{port}/echo"
    try:
        trusting = ssl.create_default_context(cafile=str(cert))
        async with client(ssl_context=trusting) as http:
            response = await http.get(url)
        async with client() as http:
            with pytest.raises(httpx.ConnectError):
                await http.get(url)
    finally:
        await runner.cleanup()

    assert response.json()["method"] == "GET"
