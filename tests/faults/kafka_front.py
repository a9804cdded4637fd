"""A TLS and SASL front door for the embedded broker, for tests only.

Tansu 0.6 (the embedded broker) accepts ``--cert``/``--key`` but cannot be given both, so it
serves no TLS; with ``--authentication`` it refuses every login but offers no way to create
the first user (``tansu user create`` itself needs an authenticated connection, PLAIN is not
built in). So the broker side of TLS and SASL is played here, in front of a plaintext Tansu
that advertises this front's port: TLS is terminated with a test CA's certificate, the
client's ``SaslHandshake``/``SaslAuthenticate`` requests are answered as Kafka does (PLAIN,
SCRAM-SHA-256/512 per RFC 5802/7677, error 58 on a bad login), and once logged in the
connection is piped to Tansu byte for byte.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import os
import shutil
import ssl
import struct
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

_API_VERSIONS = 18
_SASL_HANDSHAKE = 17
_SASL_AUTHENTICATE = 36
_UNSUPPORTED_SASL_MECHANISM = 33
_SASL_AUTHENTICATION_FAILED = 58
_ILLEGAL_SASL_STATE = 34
_SCRAM_ITERATIONS = 4096
_HASHES = {"SCRAM-SHA-256": "sha256", "SCRAM-SHA-512": "sha512"}


@dataclass(frozen=True)
class TestCertificates:
    ca: Path
    cert: Path
    key: Path


def make_certificates(directory: Path, name: str = "test") -> TestCertificates | None:
    """A CA and a server certificate for 127.0.0.1 made with ``openssl`` (None without it)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        return None
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_key = directory / f"{name}-ca.pem", directory / f"{name}-ca.key"
    cert, key = directory / f"{name}-broker.pem", directory / f"{name}-broker.key"
    csr, ext = directory / f"{name}-broker.csr", directory / f"{name}-ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    ca_command = f"req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN={name}-ca"
    csr_command = "req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1"
    sign_command = f"x509 -req -CAcreateserial -days 2 -in {csr} -CA {ca} -CAkey {ca_key}"
    for command in (
        [*ca_command.split(), "-keyout", str(ca_key), "-out", str(ca)],
        [*csr_command.split(), "-keyout", str(key), "-out", str(csr)],
        [*sign_command.split(), "-out", str(cert), "-extfile", str(ext)],
    ):
        subprocess.run([openssl, *command], check=True, capture_output=True)
    return TestCertificates(ca, cert, key)


def _string(value: str | None) -> bytes:
    if value is None:
        return struct.pack(">h", -1)
    data = value.encode()
    return struct.pack(">h", len(data)) + data


def _bytes(value: bytes) -> bytes:
    return struct.pack(">i", len(value)) + value


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    (size,) = struct.unpack(">i", await reader.readexactly(4))
    return await reader.readexactly(size)


def _frame(payload: bytes) -> bytes:
    return struct.pack(">i", len(payload)) + payload


def _split_request(frame: bytes) -> tuple[int, int, int, bytes]:
    """(api_key, api_version, correlation_id, body) of a request with header v1."""
    api_key, api_version, correlation_id, client_id_length = struct.unpack(">hhih", frame[:10])
    return api_key, api_version, correlation_id, frame[10 + max(0, client_id_length) :]


class _Scram:
    """The server side of one SCRAM exchange."""

    def __init__(self, mechanism: str, users: dict[str, str]) -> None:
        self._hash = _HASHES[mechanism]
        self._users = users
        self._first_bare = ""
        self._server_first = ""
        self._nonce = ""
        self._salted = b""
        self.user = ""

    def _hmac(self, key: bytes, message: bytes) -> bytes:
        return hmac.new(key, message, self._hash).digest()

    def first(self, message: str) -> str:
        self._first_bare = message.split(",", 2)[2]  # drop the gs2 header "n,,"
        fields = dict(part.split("=", 1) for part in self._first_bare.split(","))
        self.user = fields["n"].replace("=2C", ",").replace("=3D", "=")
        self._nonce = fields["r"] + base64.b64encode(os.urandom(18)).decode()
        salt = os.urandom(16)
        password = self._users.get(self.user, os.urandom(16).hex())
        self._salted = hashlib.pbkdf2_hmac(self._hash, password.encode(), salt, _SCRAM_ITERATIONS)
        self._server_first = (
            f"r={self._nonce},s={base64.b64encode(salt).decode()},i={_SCRAM_ITERATIONS}"
        )
        return self._server_first

    def final(self, message: str) -> str | None:
        """The server-final message, or None when the proof is wrong."""
        without_proof, _, proof = message.rpartition(",p=")
        fields = dict(part.split("=", 1) for part in without_proof.split(","))
        if fields.get("r") != self._nonce or self.user not in self._users:
            return None
        auth_message = f"{self._first_bare},{self._server_first},{without_proof}".encode()
        client_key = self._hmac(self._salted, b"Client Key")
        stored_key = hashlib.new(self._hash, client_key).digest()
        signature = self._hmac(stored_key, auth_message)
        claimed = bytes(a ^ b for a, b in zip(base64.b64decode(proof), signature, strict=False))
        if hashlib.new(self._hash, claimed).digest() != stored_key:
            return None
        server_signature = self._hmac(self._hmac(self._salted, b"Server Key"), auth_message)
        return "v=" + base64.b64encode(server_signature).decode()


@dataclass
class SecureFront:
    """Listens on ``port`` (TLS when ``certificates``), logs clients in when ``users``, and
    pipes them to the broker at ``upstream``."""

    upstream: tuple[str, int]
    port: int
    certificates: TestCertificates | None = None
    users: dict[str, str] | None = None
    logins: list[tuple[str, str, bool]] = field(default_factory=list)
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def __aenter__(self) -> SecureFront:
        context = None
        if self.certificates is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(self.certificates.cert, self.certificates.key)
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port, ssl=context)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        try:
            if self.users is None or await self._log_in(reader, writer, up_reader, up_writer):
                await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            self._tasks.discard(task)
            for w in (writer, up_writer):
                w.close()
                with contextlib.suppress(OSError, ssl.SSLError):
                    await w.wait_closed()

    async def _log_in(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up_reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
    ) -> bool:
        assert self.users is not None
        mechanism = ""
        scram: _Scram | None = None
        while True:
            frame = await _read_frame(reader)
            api_key, version, correlation, body = _split_request(frame)
            head = struct.pack(">i", correlation)
            if api_key == _API_VERSIONS:
                up_writer.write(_frame(frame))
                writer.write(_frame(await _read_frame(up_reader)))
            elif api_key == _SASL_HANDSHAKE:
                (length,) = struct.unpack(">h", body[:2])
                mechanism = body[2 : 2 + length].decode()
                offered = ["PLAIN", *_HASHES]
                error = 0 if mechanism in offered else _UNSUPPORTED_SASL_MECHANISM
                names = b"".join(_string(name) for name in offered)
                writer.write(_frame(head + struct.pack(">hi", error, len(offered)) + names))
                if error:
                    return False
            elif api_key == _SASL_AUTHENTICATE:
                (length,) = struct.unpack(">i", body[:4])
                message = body[4 : 4 + length].decode()
                answer: str | None
                if mechanism == "PLAIN":
                    _, user, password = message.split("\0", 2)
                    answer, done = ("" if self.users.get(user) == password else None), True
                elif scram is None:
                    scram = _Scram(mechanism, self.users)
                    answer, done, user = scram.first(message), False, ""
                else:
                    answer, done, user = scram.final(message), True, scram.user
                ok = answer is not None
                error = 0 if ok else _SASL_AUTHENTICATION_FAILED
                text = None if ok else f"Authentication failed: invalid credentials ({mechanism})"
                reply = head + struct.pack(">h", error) + _string(text)
                reply += _bytes((answer or "").encode())
                if version >= 1:
                    reply += struct.pack(">q", 0)
                writer.write(_frame(reply))
                if not ok or done:
                    self.logins.append((mechanism, user, ok))
                    await writer.drain()
                    return ok
            else:
                error_reply = head + struct.pack(">h", _ILLEGAL_SASL_STATE)
                writer.write(_frame(error_reply))
                return False
            await writer.drain()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    with contextlib.suppress(OSError, RuntimeError):
        writer.write_eof()
