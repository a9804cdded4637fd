from __future__ import annotations

import re
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, get_args

import pytest
from pydantic import BaseModel, SecretStr

from consumer.config import IngressSourceSettings, Settings, load_settings, settings_from_mapping
from consumer.core.errors import ConfigError
from consumer.providers import PROVIDER_KINDS, ProviderSettings
from consumer.providers.mvmnt import MvmntSettings
from consumer.providers.shipstation import ShipStationSettings

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "config.toml"

SECRETS = {
    "SHIPSTATION_API_KEY": "ss-key-9f2c41",
    "MVMNT_CLIENT_ID": "mvmnt-client-7d1e",
    "MVMNT_CLIENT_SECRET": "mvmnt-secret-33ab0c",
    "MVMNT_ACCESS_TOKEN": "mvmnt-token-5e6f70",
}

MINIMAL = """
[kafka]
bootstrap_servers = "broker:9092"

[providers.ss]
kind = "shipstation"
base_url = "https://api.shipstation.com"
api_key = "${SHIPSTATION_API_KEY}"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def config_error(raw: dict[str, Any], env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        settings_from_mapping(raw, SECRETS if env is None else env)
    message = str(info.value)
    assert "\n" not in message
    return message


def with_provider(**account: Any) -> dict[str, Any]:
    return {"kafka": {"bootstrap_servers": "broker:9092"}, "providers": {"acct": account}}


def mvmnt(**auth: str) -> dict[str, Any]:
    return with_provider(kind="mvmnt", base_url="https://api.mvmnt.io/v1", **auth)


# --- the example file -------------------------------------------------------------------------


def test_example_config_loads_with_its_env_vars() -> None:
    settings = load_settings(EXAMPLE, SECRETS)

    shipstation = settings.providers["shipstation"]
    assert isinstance(shipstation, ShipStationSettings)
    assert shipstation.api_key.get_secret_value() == SECRETS["SHIPSTATION_API_KEY"]
    assert shipstation.void_labels is False
    account = settings.providers["mvmnt"]
    assert isinstance(account, MvmntSettings)
    assert account.client_id == SECRETS["MVMNT_CLIENT_ID"]
    assert account.client_secret is not None
    assert account.client_secret.get_secret_value() == SECRETS["MVMNT_CLIENT_SECRET"]
    assert account.access_token is None
    assert settings.kafka.input_topic == "orders.cancelled"
    assert settings.kafka.security_protocol == "PLAINTEXT"


def test_example_config_values_are_the_defaults() -> None:
    # The example promises "every key with its default": a changed default must show there.
    settings = load_settings(EXAMPLE, SECRETS)
    assert settings.processing == type(settings.processing)()
    assert settings.telemetry == type(settings.telemetry)()
    kafka_defaults = settings.kafka.model_validate({"bootstrap_servers": "127.0.0.1:9092"})
    assert settings.kafka == kafka_defaults
    for account in settings.providers.values():
        required = account.model_dump(
            include={"kind", "base_url", "api_key", "token_url", "client_id", "client_secret"},
            exclude_none=True,
        )
        # model_dump keeps SecretStr objects, which validate back to themselves.
        assert account == type(account).model_validate(required)


_SECTION = re.compile(r"^#?\s*\[([A-Za-z0-9_.-]+)\]\s*$")
_KEY = re.compile(r"^#?\s*([A-Za-z_][A-Za-z0-9_]*)\s*=")


def _documented_keys(text: str) -> dict[str, set[str]]:
    """Keys per section, commented-out ones included."""
    keys: dict[str, set[str]] = {"": set()}
    section = ""
    for line in text.splitlines():
        if match := _SECTION.match(line):
            section = match[1]
            keys.setdefault(section, set())
        elif match := _KEY.match(line):
            keys[section].add(match[1])
    return keys


def _model_keys(model: type[BaseModel], section: str) -> dict[str, set[str]]:
    keys: dict[str, set[str]] = {section: set()}
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys.update(_model_keys(annotation, f"{section}.{name}".lstrip(".")))
        elif not (model is Settings and name == "providers"):
            keys[section].add(name)
    return keys


def _expected_keys(example: str) -> dict[str, set[str]]:
    expected = _model_keys(Settings, "")
    accounts = tomllib.loads(example)["providers"]
    account_by_kind = {account["kind"]: name for name, account in accounts.items()}
    (union, *_) = get_args(ProviderSettings)
    for provider_model in get_args(union):
        (kind,) = get_args(provider_model.model_fields["kind"].annotation)
        assert kind in account_by_kind, f"examples/config.toml has no account of kind {kind}"
        expected.update(_model_keys(provider_model, f"providers.{account_by_kind[kind]}"))
    # [ingress.sources.NAME] is a table of tables, like providers: one documented example.
    expected["ingress"].discard("sources")
    (source,) = [s for s in _documented_keys(example) if s.startswith("ingress.sources.")]
    expected.update(_model_keys(IngressSourceSettings, source))
    return expected


def test_example_config_lists_every_setting_and_nothing_else() -> None:
    example = EXAMPLE.read_text(encoding="utf-8")
    documented = _documented_keys(example)
    expected = _expected_keys(example)

    missing = {s: sorted(k - documented.get(s, set())) for s, k in expected.items()}
    unknown = {s: sorted(k - expected.get(s, set())) for s, k in documented.items()}
    missing = {s: k for s, k in missing.items() if k}
    unknown = {s: k for s, k in unknown.items() if k}
    assert not missing, f"add to examples/config.toml: {missing}"
    assert not unknown, f"not settings, remove from examples/config.toml: {unknown}"


def test_drift_check_notices_a_missing_key() -> None:
    example = EXAMPLE.read_text(encoding="utf-8")
    trimmed = re.sub(r"(?m)^# ssl_keyfile = .*\n", "", example)
    assert trimmed != example
    assert "ssl_keyfile" not in _documented_keys(trimmed)["kafka"]
    assert "ssl_keyfile" in _expected_keys(trimmed)["kafka"]


# --- interpolation and overrides --------------------------------------------------------------


def test_var_is_replaced_inside_a_longer_string(tmp_path: Path) -> None:
    text = MINIMAL.replace('"broker:9092"', '"${BROKER_HOST}:9092"')
    settings = load_settings(write(tmp_path, text), {**SECRETS, "BROKER_HOST": "kafka-0"})
    assert settings.kafka.bootstrap_servers == "kafka-0:9092"


def test_default_is_used_only_when_the_var_is_unset(tmp_path: Path) -> None:
    text = MINIMAL + '\n[telemetry]\nservice_name = "${SERVICE:-cancel-default}"\n'
    path = write(tmp_path, text)

    assert load_settings(path, SECRETS).telemetry.service_name == "cancel-default"
    with_var = load_settings(path, {**SECRETS, "SERVICE": "cancel-eu"})
    assert with_var.telemetry.service_name == "cancel-eu"


def test_empty_default_yields_an_empty_string() -> None:
    raw = with_provider(
        kind="shipstation", base_url="https://api.shipstation.com", api_key="k${SUFFIX:-}"
    )
    settings = settings_from_mapping(raw, {})
    account = settings.providers["acct"]
    assert isinstance(account, ShipStationSettings)
    assert account.api_key.get_secret_value() == "k"


def test_missing_env_var_names_key_and_variable_but_no_secret(tmp_path: Path) -> None:
    env = {k: v for k, v in SECRETS.items() if k != "MVMNT_CLIENT_SECRET"}
    with pytest.raises(ConfigError) as info:
        load_settings(EXAMPLE, env)

    message = str(info.value)
    assert "providers.mvmnt.client_secret" in message
    assert "MVMNT_CLIENT_SECRET" in message
    assert "\n" not in message
    for secret in SECRETS.values():
        assert secret not in message


def test_bootstrap_servers_env_var_overrides_the_file(tmp_path: Path) -> None:
    env = {**SECRETS, "KAFKA_BOOTSTRAP_SERVERS": "kafka-1:9093,kafka-2:9093"}
    settings = load_settings(write(tmp_path, MINIMAL), env)
    assert settings.kafka.bootstrap_servers == "kafka-1:9093,kafka-2:9093"


def test_bootstrap_servers_env_var_may_stand_in_for_the_key() -> None:
    raw = with_provider(kind="shipstation", base_url="https://a.example", api_key="k")
    del raw["kafka"]["bootstrap_servers"]
    settings = settings_from_mapping(raw, {"KAFKA_BOOTSTRAP_SERVERS": "kafka-1:9093"})
    assert settings.kafka.bootstrap_servers == "kafka-1:9093"


# --- validation errors ------------------------------------------------------------------------


def test_unknown_kafka_key_is_named_by_its_dotted_path() -> None:
    raw = with_provider(kind="shipstation", base_url="https://a.example", api_key="k")
    raw["kafka"]["bootstrap_server"] = "typo:9092"
    # No "did you mean": the table already sets bootstrap_servers.
    assert config_error(raw) == "config: kafka.bootstrap_server: unknown key"


def test_unknown_provider_key_is_named_by_account_not_by_kind() -> None:
    raw = with_provider(
        kind="shipstation", base_url="https://a.example", api_key="k", api_secret="x"
    )
    assert config_error(raw).endswith("providers.acct.api_secret: unknown key")


def test_unknown_nested_section_key_is_named() -> None:
    raw = with_provider(kind="shipstation", base_url="https://a.example", api_key="k")
    raw["processing"] = {"retry": {"max_attempt": 3}}
    assert config_error(raw).endswith(
        "processing.retry.max_attempt: unknown key (did you mean max_attempts?)"
    )


def test_unknown_provider_kind_is_refused_naming_the_account() -> None:
    message = config_error(with_provider(kind="fedex", base_url="https://a.example"))
    assert "providers.acct" in message
    assert "'shipstation'" in message
    assert "'mvmnt'" in message


def test_provider_without_kind_is_refused() -> None:
    message = config_error(with_provider(base_url="https://a.example", api_key="k"))
    assert "providers.acct" in message
    assert "kind" in message


@pytest.mark.parametrize(
    "auth",
    [
        pytest.param({"access_token": "${MVMNT_ACCESS_TOKEN}"}, id="static token"),
        pytest.param(
            {
                "token_url": "https://api.mvmnt.io/oauth2/token",
                "client_id": "${MVMNT_CLIENT_ID}",
                "client_secret": "${MVMNT_CLIENT_SECRET}",
            },
            id="client credentials",
        ),
    ],
)
def test_mvmnt_accepts_one_way_to_authenticate(auth: dict[str, str]) -> None:
    settings = settings_from_mapping(mvmnt(**auth), SECRETS)
    assert isinstance(settings.providers["acct"], MvmntSettings)


@pytest.mark.parametrize(
    ("auth", "expected"),
    [
        pytest.param({}, "set access_token, or token_url", id="nothing"),
        pytest.param(
            {
                "access_token": "${MVMNT_ACCESS_TOKEN}",
                "token_url": "https://api.mvmnt.io/oauth2/token",
                "client_id": "${MVMNT_CLIENT_ID}",
                "client_secret": "${MVMNT_CLIENT_SECRET}",
            },
            "not both",
            id="token and client credentials",
        ),
        pytest.param(
            {"token_url": "https://api.mvmnt.io/oauth2/token", "client_id": "${MVMNT_CLIENT_ID}"},
            "set access_token, or token_url",
            id="client id without secret",
        ),
        pytest.param(
            {"client_id": "${MVMNT_CLIENT_ID}", "client_secret": "${MVMNT_CLIENT_SECRET}"},
            "set access_token, or token_url",
            id="credentials without token url",
        ),
    ],
)
def test_mvmnt_refuses_incomplete_or_mixed_auth(auth: dict[str, str], expected: str) -> None:
    message = config_error(mvmnt(**auth))
    assert "providers.acct" in message
    assert expected in message
    for secret in SECRETS.values():
        assert secret not in message


@pytest.mark.parametrize("protocol", ["SASL_PLAINTEXT", "SASL_SSL"])
def test_sasl_protocol_without_credentials_is_refused(protocol: str) -> None:
    raw = with_provider(kind="shipstation", base_url="https://a.example", api_key="k")
    raw["kafka"].update(security_protocol=protocol, sasl_mechanism="SCRAM-SHA-512")
    message = config_error(raw)
    assert message.startswith("config: kafka: ")
    assert f"security_protocol {protocol} needs" in message


def test_sasl_protocol_with_credentials_keeps_the_password_secret() -> None:
    raw = with_provider(kind="shipstation", base_url="https://a.example", api_key="k")
    raw["kafka"].update(
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="cancel-processor",
        sasl_password="${KAFKA_SASL_PASSWORD}",
    )
    settings = settings_from_mapping(raw, {"KAFKA_SASL_PASSWORD": "sasl-pw-81cc"})
    assert isinstance(settings.kafka.sasl_password, SecretStr)
    assert settings.kafka.sasl_password.get_secret_value() == "sasl-pw-81cc"
    assert "sasl-pw-81cc" not in repr(settings)


def test_bad_value_is_named_without_echoing_it() -> None:
    raw = with_provider(kind="shipstation", base_url="ftp://${SHIPSTATION_API_KEY}", api_key="k")
    message = config_error(raw)
    assert "providers.acct.base_url" in message
    assert SECRETS["SHIPSTATION_API_KEY"] not in message


def test_missing_kafka_section_is_named() -> None:
    raw = with_provider(kind="shipstation", base_url="https://a.example", api_key="k")
    del raw["kafka"]
    assert config_error(raw, env={}) == "config: kafka: Field required"


def test_several_problems_are_each_named_unknown_keys_first() -> None:
    raw = with_provider(kind="shipstation", base_url="https://a.example", api_key="k")
    raw["kafka"] = {"bootstrap_server": "typo:9092"}
    assert config_error(raw) == (
        "config: 2 problems: "
        "kafka.bootstrap_server: unknown key (did you mean bootstrap_servers?); "
        "kafka.bootstrap_servers: Field required"
    )


def test_other_problems_keep_their_order_after_the_unknown_keys() -> None:
    raw = with_provider(kind="shipstation", base_url="ftp://a.example", api_key="k")
    raw["processing"] = {"max_in_flight": 0, "retry": {"max_attempts": 0}}
    raw["telemetry"] = {"log_formt": "text"}
    message = config_error(raw)
    assert message.startswith("config: 4 problems: ")
    problems = message.removeprefix("config: 4 problems: ").split("; ")
    assert [problem.split(": ")[0] for problem in problems] == [
        "telemetry.log_formt",
        "processing.max_in_flight",
        "processing.retry.max_attempts",
        "providers.acct.base_url",
    ]


def test_did_you_mean_knows_each_provider_kinds_keys() -> None:
    raw = with_provider(
        kind="shipstation", base_url="https://a.example", api_key="k", void_label=True
    )
    assert config_error(raw) == (
        "config: providers.acct.void_label: unknown key (did you mean void_labels?)"
    )
    message = config_error(mvmnt(access_token="t", tokn_url="https://a.example/token"))
    assert message == "config: providers.acct.tokn_url: unknown key (did you mean token_url?)"


def test_no_did_you_mean_when_no_key_is_close() -> None:
    raw = with_provider(kind="shipstation", base_url="https://a.example", api_key="k")
    raw["telemetry"] = {"colour": "always"}
    assert config_error(raw) == "config: telemetry.colour: unknown key"


def test_several_problems_never_show_their_values() -> None:
    secret = SECRETS["SHIPSTATION_API_KEY"]
    raw = with_provider(kind="shipstation", base_url=f"ftp://{secret}", api_key=secret)
    raw["providers"]["acct"]["api_keys"] = secret
    raw["kafka"].update(sasl_pasword=secret, session_timeout_ms=secret)
    message = config_error(raw)
    assert message.startswith("config: 4 problems: ")
    assert secret not in message


# --- log level --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "stored"),
    [
        ("info", "INFO"),
        ("Info", "INFO"),
        (" debug ", "DEBUG"),
        ("warn", "WARNING"),
        ("Warning", "WARNING"),
        ("ERROR", "ERROR"),
    ],
)
def test_log_level_is_accepted_in_any_case(written: str, stored: str) -> None:
    raw = with_provider(kind="shipstation", base_url="https://a.example", api_key="k")
    raw["telemetry"] = {"log_level": written}
    assert settings_from_mapping(raw, {}).telemetry.log_level == stored


def test_unknown_log_level_is_refused() -> None:
    raw = with_provider(kind="shipstation", base_url="https://a.example", api_key="k")
    raw["telemetry"] = {"log_level": "verbose"}
    assert config_error(raw).startswith("config: telemetry.log_level: Input should be")


# --- empty secrets ----------------------------------------------------------------------------


def _with_sasl_password(value: str) -> dict[str, Any]:
    raw = with_provider(kind="shipstation", base_url="https://a.example", api_key="k")
    raw["kafka"].update(
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="cancel-processor",
        sasl_password=value,
    )
    return raw


def _with_source_secret(value: str) -> dict[str, Any]:
    return {
        "kafka": {"bootstrap_servers": "b:9092"},
        "ingress": {"sources": {"erp": {"secret": value}}},
    }


# (model, field) -> a config setting it to a value, and the key the error must name.
SECRET_FIELDS: dict[tuple[str, str], tuple[Callable[[str], dict[str, Any]], str]] = {
    ("KafkaSettings", "sasl_password"): (_with_sasl_password, "kafka.sasl_password"),
    ("ShipStationSettings", "api_key"): (
        lambda v: with_provider(kind="shipstation", base_url="https://a.example", api_key=v),
        "providers.acct.api_key",
    ),
    ("MvmntSettings", "client_secret"): (
        lambda v: mvmnt(token_url="https://a.example/token", client_id="c", client_secret=v),
        "providers.acct.client_secret",
    ),
    ("MvmntSettings", "access_token"): (
        lambda v: mvmnt(access_token=v),
        "providers.acct.access_token",
    ),
    ("IngressSourceSettings", "secret"): (_with_source_secret, "ingress.sources.erp.secret"),
}


def _settings_models(node: Any, found: set[type[BaseModel]] | None = None) -> set[type[BaseModel]]:
    """Every settings model reachable from ``node`` through fields, dicts, unions, Annotated."""
    found = set() if found is None else found
    if isinstance(node, type) and issubclass(node, BaseModel):
        if node not in found:
            found.add(node)
            for field in node.model_fields.values():
                _settings_models(field.annotation, found)
    else:
        for arg in get_args(node):
            _settings_models(arg, found)
    return found


def test_every_secret_field_is_covered_by_the_empty_secret_tests() -> None:
    secret_fields = {
        (model.__name__, name)
        for model in _settings_models(Settings)
        for name, field in model.model_fields.items()
        if SecretStr in (field.annotation, *get_args(field.annotation))
    }
    assert secret_fields == set(SECRET_FIELDS)


@pytest.mark.parametrize("value", ["", "   ", "\t\n"], ids=["empty", "spaces", "whitespace"])
@pytest.mark.parametrize("field", list(SECRET_FIELDS), ids=".".join)
def test_empty_secret_is_refused_naming_the_key(field: tuple[str, str], value: str) -> None:
    build, key = SECRET_FIELDS[field]
    assert config_error(build(value), env={}) == f"config: {key}: must not be empty"


@pytest.mark.parametrize("field", list(SECRET_FIELDS), ids=".".join)
def test_secret_from_an_empty_variable_names_the_variable(field: tuple[str, str]) -> None:
    build, key = SECRET_FIELDS[field]
    message = config_error(build("${CANCEL_SECRET}"), env={"CANCEL_SECRET": ""})
    assert message == f'config: {key}: must not be empty (is CANCEL_SECRET set to ""?)'


def test_an_empty_secret_is_named_beside_other_problems_without_their_values() -> None:
    raw = _with_sasl_password("${KAFKA_SASL_PASSWORD}")
    raw["providers"]["acct"]["api_key"] = "${SHIPSTATION_API_KEY}"
    raw["providers"]["acct"]["base_url"] = "ftp://${SHIPSTATION_API_KEY}"
    message = config_error(raw, env={"KAFKA_SASL_PASSWORD": " ", **SECRETS})
    assert message == (
        "config: 2 problems: "
        'kafka.sasl_password: must not be empty (is KAFKA_SASL_PASSWORD set to ""?); '
        "providers.acct.base_url: String should match pattern '^https?://'"
    )


# --- descriptions -----------------------------------------------------------------------------


def test_every_setting_has_a_description() -> None:
    # The configuration reference is rendered from these: key, type, default, description.
    models = _settings_models(Settings)
    kinds = {
        get_args(m.model_fields["kind"].annotation)[0] for m in models if "kind" in m.model_fields
    }
    assert kinds == set(PROVIDER_KINDS)
    assert {ShipStationSettings, MvmntSettings, IngressSourceSettings} <= models
    undescribed = [
        f"{model.__name__}.{name}"
        for model in models
        for name, field in model.model_fields.items()
        if not (field.description or "").strip()
    ]
    assert not undescribed, f"add a docstring below each of: {sorted(undescribed)}"
    assert not [m.__name__ for m in models if not (m.__doc__ or "").strip()]


# --- the file itself --------------------------------------------------------------------------


def test_invalid_toml_is_one_line_naming_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[kafka]\nbootstrap_servers = "unterminated\n')
    with pytest.raises(ConfigError) as info:
        load_settings(path, SECRETS)
    message = str(info.value)
    assert message.startswith(f"config file {path} is not valid TOML")
    assert "\n" not in message


def test_missing_file_is_one_line_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError) as info:
        load_settings(path, SECRETS)
    assert str(info.value) == f"config file {path} does not exist"


def test_errors_carry_no_traceback_context(tmp_path: Path) -> None:
    # `from None`: the operator sees one line, not a chained pydantic or tomllib trace.
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, "[kafka"), SECRETS)
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__


def test_secrets_are_secretstr_and_hidden_from_repr_and_str() -> None:
    settings = load_settings(EXAMPLE, SECRETS)
    account = settings.providers["shipstation"]
    assert isinstance(account, ShipStationSettings)
    assert isinstance(account.api_key, SecretStr)
    for text in (repr(settings), str(settings)):
        assert SECRETS["SHIPSTATION_API_KEY"] not in text
        assert SECRETS["MVMNT_CLIENT_SECRET"] not in text


def test_settings_are_frozen() -> None:
    settings = load_settings(EXAMPLE, SECRETS)
    with pytest.raises(ValueError, match="frozen"):
        settings.kafka.group_id = "other"  # type: ignore[misc]
