"""[ingress] settings and the `ingress` command's start-up errors."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr

from consumer.config import (
    IngressSettings,
    load_ingress_settings,
    load_settings,
    settings_from_mapping,
)
from consumer.core.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "config.toml"
SECRET = "erp-webhook-secret-0123456789"
KAFKA = {"bootstrap_servers": "broker:9092"}


def test_ingress_section_is_optional_with_working_defaults() -> None:
    settings = settings_from_mapping({"kafka": KAFKA}, {})
    assert settings.ingress == IngressSettings()
    assert (settings.ingress.host, settings.ingress.port) == ("0.0.0.0", 8080)
    assert settings.ingress.max_body_bytes == 256 * 1024
    assert settings.ingress.sources == {}


def test_example_ingress_values_are_the_defaults() -> None:
    settings = load_settings(
        EXAMPLE,
        {
            "SHIPSTATION_API_KEY": "k",
            "MVMNT_CLIENT_ID": "c",
            "MVMNT_CLIENT_SECRET": "s",
        },
    )
    assert settings.ingress == IngressSettings()


def test_source_secret_comes_from_the_environment_and_stays_secret() -> None:
    raw = {"kafka": KAFKA, "ingress": {"sources": {"erp": {"secret": "${ERP_SECRET}"}}}}
    settings = settings_from_mapping(raw, {"ERP_SECRET": SECRET})
    secret = settings.ingress.sources["erp"].secret
    assert isinstance(secret, SecretStr)
    assert secret.get_secret_value() == SECRET
    assert SECRET not in repr(settings)


def _error(raw: dict[str, object], env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        settings_from_mapping({"kafka": KAFKA, **raw}, env or {})
    return str(info.value)


def test_short_secret_is_refused_naming_the_key_not_the_value() -> None:
    message = _error({"ingress": {"sources": {"erp": {"secret": "short-one"}}}})
    assert message == "config: ingress.sources.erp.secret: must be at least 16 characters"


def test_unset_secret_variable_is_named() -> None:
    message = _error({"ingress": {"sources": {"erp": {"secret": "${ERP_SECRET}"}}}})
    assert "ingress.sources.erp.secret" in message
    assert "ERP_SECRET" in message


def test_bad_source_name_is_refused() -> None:
    message = _error({"ingress": {"sources": {"erp west": {"secret": SECRET}}}})
    assert "ingress.sources" in message


def test_unknown_ingress_key_is_refused() -> None:
    assert _error({"ingress": {"prot": 8080}}) == (
        "config: ingress.prot: unknown key (did you mean port?)"
    )


def test_bodies_larger_than_the_processor_accepts_are_refused() -> None:
    message = _error(
        {"ingress": {"max_body_bytes": 2_000_000}, "processing": {"max_event_bytes": 1_000_000}}
    )
    assert "ingress.max_body_bytes must not exceed processing.max_event_bytes" in message


def test_ingress_loading_skips_providers_and_their_secrets(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        f"""
[kafka]
bootstrap_servers = "broker:9092"

[ingress.sources.erp]
secret = "{SECRET}"

[providers.ss]
kind = "shipstation"
base_url = "https://api.shipstation.com"
api_key = "${{SHIPSTATION_API_KEY}}"
""",
        encoding="utf-8",
    )
    settings = load_ingress_settings(path, {})
    assert settings.providers == {}
    assert list(settings.ingress.sources) == ["erp"]


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "consumer", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
        check=False,
    )


def test_ingress_without_sources_exits_2_with_one_line() -> None:
    result = _cli("ingress", "--config", str(EXAMPLE))
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: ingress.sources: no webhook sources configured; add "
        '[ingress.sources.NAME] with secret = "${VAR}"'
    )


def test_ingress_without_config_exits_2() -> None:
    result = _cli("ingress")
    assert result.returncode == 2
    assert result.stderr.strip() == "error: pass --config FILE or set CANCEL_PROCESSOR_CONFIG"


def test_ingress_bad_secret_exits_2_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        '[kafka]\nbootstrap_servers = "b:9092"\n[ingress.sources.erp]\nsecret = "${ERP}"\n',
        encoding="utf-8",
    )
    result = _cli("ingress", "--config", str(path))
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"error: {path}: ingress.sources.erp.secret: environment variable ERP is not set"
    )


def test_run_without_providers_exits_2_with_one_line(tmp_path: Path) -> None:
    # providers became optional in the model (the ingress needs none); `run` still does.
    path = tmp_path / "config.toml"
    path.write_text('[kafka]\nbootstrap_servers = "b:9092"\n', encoding="utf-8")
    result = _cli("run", "--config", str(path))
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {path}: providers: no provider account configured"


def test_ingress_on_a_taken_port_exits_2_with_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = tmp_path / "config.toml"
        path.write_text(
            f'[kafka]\nbootstrap_servers = "127.0.0.1:1"\n[ingress]\nhost = "127.0.0.1"\n'
            f'port = {port}\n[ingress.sources.erp]\nsecret = "{SECRET}"\n',
            encoding="utf-8",
        )
        result = _cli("ingress", "--config", str(path))
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"error: ingress.port: cannot listen on 127.0.0.1:{port}: Address already in use"
    )
