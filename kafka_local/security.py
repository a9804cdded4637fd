"""A real Kafka node with security on, for the tests of TLS, SASL and ACLs.

``SecureKafkaNode`` is a ``KafkaNode`` (``kafka_local/broker.py``) with one more listener,
``SECURE``: SASL_SSL, SCRAM-SHA-512 (and SCRAM-SHA-256) logins over TLS. Its certificate
comes from ``make_certificates`` (``openssl``: a CA of the test's own and a server
certificate for 127.0.0.1 and localhost), given to Kafka as a PEM keystore file
(``ssl.keystore.type=PEM``, ``ssl.keystore.location``: the private key and the certificate
in one file; no JKS, no keytool; no client certificates asked for). The SCRAM users are
written into the metadata when the storage is formatted (``StorageTool format
--add-scram``), so they exist from the first start.

ACLs are on (``StandardAuthorizer``, nothing allowed unless an ACL allows it). The internal
listeners (PLAINTEXT, used between broker and controller and by ``wait_ready``, and
CONTROLLER) authenticate nobody: their principal is ``User:ANONYMOUS``, a super user like
the SCRAM user ``admin``. ``create_acls`` sends ``CreateAcls`` over the PLAINTEXT listener
and waits until the broker's authorizer applies them (``DescribeAcls``).

Some Kafka behaviour worth knowing when writing ACLs for a test (Kafka 3.0+, KIP-679): an
idempotent producer's ``InitProducerId`` is allowed with ``IdempotentWrite`` on the cluster
*or* ``Write`` on any topic, so a principal that may write a topic is never refused it, even
by a DENY ``IdempotentWrite`` ACL.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import shutil
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from aiokafka.conn import create_conn
from aiokafka.errors import for_code
from aiokafka.protocol.admin import CreateAclsRequest, DescribeAclsRequest

from kafka_local.broker import (
    HOST,
    JVM_OPTIONS,
    KafkaNode,
    KafkaSetupError,
    Listener,
    PropertyValue,
)

__all__ = [
    "ADMIN",
    "CLUSTER",
    "SASL_LISTENER",
    "SCRAM_MECHANISMS",
    "SECURE_LISTENER",
    "Acl",
    "Certificates",
    "Operation",
    "Pattern",
    "Permission",
    "Resource",
    "SecureKafkaNode",
    "make_certificates",
    "processor_acls",
]

SECURE_LISTENER = "SECURE"
SASL_LISTENER = "SASL"
SCRAM_MECHANISMS = ("SCRAM-SHA-512", "SCRAM-SHA-256")
ADMIN = "admin"
CLUSTER = "kafka-cluster"  # the name of the one cluster resource
_SCRAM_ITERATIONS = 4096
_ACL_WAIT_SECONDS = 15.0


# --- Certificates -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Certificates:
    """A CA, and a server certificate it signed for 127.0.0.1 and localhost (PEM files)."""

    ca: Path  # what a client trusts (``ssl_cafile``)
    ca_key: Path
    cert: Path
    key: Path  # PKCS#8, unencrypted
    keystore: Path  # the key, then the certificate: Kafka's file-based PEM keystore


def make_certificates(directory: Path, name: str = "test") -> Certificates:
    """Make a CA and a server certificate with ``openssl`` in ``directory``; another
    ``name`` makes another, unrelated CA (one a client must not trust)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise KafkaSetupError("no `openssl` on PATH: the TLS tests make their certificates")
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_key = directory / f"{name}-ca.pem", directory / f"{name}-ca.key"
    cert, key = directory / f"{name}-broker.pem", directory / f"{name}-broker.key"
    csr, extensions = directory / f"{name}-broker.csr", directory / f"{name}-broker.ext"
    extensions.write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
    )
    commands = [
        # -addext: a CA certificate Python's ssl (and Java) accepts as an issuer.
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
         f"/CN={name}-test-ca", "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign",
         "-keyout", str(ca_key), "-out", str(ca)],
        ["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
         "-keyout", str(key), "-out", str(csr)],
        ["x509", "-req", "-days", "2", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
         "-CAcreateserial", "-extfile", str(extensions), "-out", str(cert)],
    ]  # fmt: skip
    for command in commands:
        done = subprocess.run(
            [openssl, *command], capture_output=True, text=True, timeout=60, check=False
        )
        if done.returncode != 0:
            raise KafkaSetupError(f"openssl {command[0]} failed: {done.stderr.strip()}")
    keystore = directory / f"{name}-broker-keystore.pem"
    keystore.write_text(key.read_text() + cert.read_text())
    return Certificates(ca, ca_key, cert, key, keystore)


# --- ACLs -------------------------------------------------------------------------------


class Resource(enum.IntEnum):
    """``org.apache.kafka.common.resource.ResourceType``."""

    TOPIC = 2
    GROUP = 3
    CLUSTER = 4
    TRANSACTIONAL_ID = 5


class Operation(enum.IntEnum):
    """``org.apache.kafka.common.acl.AclOperation``."""

    ALL = 2
    READ = 3
    WRITE = 4
    CREATE = 5
    DELETE = 6
    ALTER = 7
    DESCRIBE = 8
    CLUSTER_ACTION = 9
    DESCRIBE_CONFIGS = 10
    ALTER_CONFIGS = 11
    IDEMPOTENT_WRITE = 12


class Permission(enum.IntEnum):
    """``org.apache.kafka.common.acl.AclPermissionType``."""

    DENY = 2
    ALLOW = 3


class Pattern(enum.IntEnum):
    """``org.apache.kafka.common.resource.PatternType``."""

    LITERAL = 3
    PREFIXED = 4


@dataclasses.dataclass(frozen=True, slots=True)
class Acl:
    """One ACL binding: ``user`` may (or, DENY, may not) ``operation`` on the resource."""

    user: str
    resource: Resource
    name: str
    operation: Operation
    permission: Permission = Permission.ALLOW
    pattern: Pattern = Pattern.LITERAL
    host: str = "*"

    @property
    def principal(self) -> str:
        return f"User:{self.user}"

    def wire_fields(self) -> dict[str, Any]:
        """The binding as the CreateAcls and DescribeAcls requests name its parts."""
        return {
            "resource_type": self.resource,
            "resource_name": self.name,
            "resource_pattern_type_filter": self.pattern,
            "principal": self.principal,
            "host": self.host,
            "operation": self.operation,
            "permission_type": self.permission,
        }

    def __str__(self) -> str:
        what = "prefix" if self.pattern is Pattern.PREFIXED else "name"
        return (
            f"{self.permission.name} {self.principal} {self.operation.name} on "
            f"{self.resource.name} {what} {self.name!r}"
        )

    @classmethod
    def allow(cls, user: str, resource: Resource, name: str, *operations: Operation) -> list[Acl]:
        return [cls(user, resource, name, operation) for operation in operations]

    @classmethod
    def deny(cls, user: str, resource: Resource, name: str, *operations: Operation) -> list[Acl]:
        return [cls(user, resource, name, operation, Permission.DENY) for operation in operations]


def processor_acls(
    user: str, *, group: str, input_topic: str, retry_topic: str, output_topics: Sequence[str]
) -> list[Acl]:
    """What the processor needs, and all it is given in the fault suite: Read and Describe
    on its input topic, Read, Write and Describe on its retry topic, Read on its group,
    Write and Describe on its output topics, IdempotentWrite on the cluster."""
    acls = Acl.allow(user, Resource.TOPIC, input_topic, Operation.READ, Operation.DESCRIBE)
    acls += Acl.allow(
        user, Resource.TOPIC, retry_topic, Operation.READ, Operation.WRITE, Operation.DESCRIBE
    )
    acls += Acl.allow(user, Resource.GROUP, group, Operation.READ)
    for topic in output_topics:
        acls += Acl.allow(user, Resource.TOPIC, topic, Operation.WRITE, Operation.DESCRIBE)
    acls += Acl.allow(user, Resource.CLUSTER, CLUSTER, Operation.IDEMPOTENT_WRITE)
    return acls


# --- The node ---------------------------------------------------------------------------


class SecureKafkaNode(KafkaNode):
    """A ``KafkaNode`` with a SASL_SSL listener (``SECURE``), SCRAM users and ACLs.

    ``users``: name -> password of the SCRAM users (SCRAM-SHA-512 and -256 credentials
    each); ``admin`` is added, a super user with ``admin_password``. Clients reach the
    secure listener at ``secure_bootstrap_servers`` and trust ``certificates.ca``; with
    ``sasl_plaintext`` the same logins without TLS at ``sasl_bootstrap_servers``.
    """

    def __init__(
        self,
        certificates: Certificates,
        users: Mapping[str, str],
        *,
        admin_password: str = "admin-secret",
        sasl_plaintext: bool = False,
        overrides: Mapping[str, PropertyValue] | None = None,
        jvm_options: Sequence[str] = JVM_OPTIONS,
        data_dir: Path | None = None,
    ) -> None:
        self.certificates = certificates
        self.users = {ADMIN: admin_password, **users}
        for name, password in self.users.items():
            # Kafka's --add-scram syntax: no way to quote these.
            if any(c in name + password for c in ",=[]\"' ") or not name or not password:
                raise ValueError(f"SCRAM user {name!r}: no spaces, quotes, ',', '=', '[' or ']'")
        listeners = [Listener(SECURE_LISTENER, "SASL_SSL")]
        if sasl_plaintext:
            listeners.append(Listener(SASL_LISTENER, "SASL_PLAINTEXT"))
        secure = SECURE_LISTENER.lower()
        settings: dict[str, PropertyValue] = {
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "super.users": f"User:ANONYMOUS;User:{ADMIN}",
            "allow.everyone.if.no.acl.found": "false",
            f"listener.name.{secure}.ssl.keystore.type": "PEM",
            f"listener.name.{secure}.ssl.keystore.location": str(certificates.keystore),
            f"listener.name.{secure}.ssl.client.auth": "none",
        }
        for listener in listeners:
            prefix = f"listener.name.{listener.name.lower()}"
            settings[f"{prefix}.sasl.enabled.mechanisms"] = ",".join(SCRAM_MECHANISMS)
            for mechanism in SCRAM_MECHANISMS:
                settings[f"{prefix}.{mechanism.lower()}.sasl.jaas.config"] = (
                    "org.apache.kafka.common.security.scram.ScramLoginModule required;"
                )
        super().__init__(
            data_dir=data_dir,
            listeners=listeners,
            overrides={**settings, **(overrides or {})},
            jvm_options=jvm_options,
        )

    @property
    def secure_bootstrap_servers(self) -> str:
        """``host:port`` of the SASL_SSL listener."""
        return self.address(SECURE_LISTENER)

    @property
    def sasl_bootstrap_servers(self) -> str:
        """``host:port`` of the SASL_PLAINTEXT listener (``sasl_plaintext=True``)."""
        return self.address(SASL_LISTENER)

    def format_arguments(self) -> list[str]:
        """Every SCRAM user, added to the bootstrap metadata when the storage is formatted."""
        scram: list[str] = []
        for name, password in self.users.items():
            for mechanism in SCRAM_MECHANISMS:
                credential = f"name={name},password={password},iterations={_SCRAM_ITERATIONS}"
                scram += ["--add-scram", f"{mechanism}=[{credential}]"]
        return scram

    # -- ACLs

    async def create_acls(self, acls: Iterable[Acl], timeout: float = _ACL_WAIT_SECONDS) -> None:
        """Create the ACLs (as ``User:ANONYMOUS``, over PLAINTEXT) and wait until the
        broker's authorizer has them."""
        wanted = list(acls)
        conn = await create_conn(HOST, self.port, client_id="test-kafka-acls")
        try:
            for acl in wanted:
                response = await conn.send(CreateAclsRequest(**acl.wire_fields()))
                for result in response.creation_responses:
                    code, message = int(result[0]), result[1]
                    if code:
                        raise RuntimeError(
                            f"CreateAcls {acl}: {for_code(code).__name__} {message or ''}"
                        )
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while missing := [acl for acl in wanted if not await self._has(conn, acl)]:
                if loop.time() > deadline:
                    raise TimeoutError(f"ACLs not applied after {timeout:g} s: {missing[0]}")
                await asyncio.sleep(0.05)
        finally:
            conn.close()

    async def _has(self, conn: Any, acl: Acl) -> bool:
        response = await conn.send(DescribeAclsRequest(**acl.wire_fields()))
        if response.error_code:
            raise RuntimeError(f"DescribeAcls {acl}: {for_code(response.error_code).__name__}")
        return bool(response.resources)
