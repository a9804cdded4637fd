"""Command line: argument parsing only; the work lives in app, the tools and the simulator."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Sequence
from datetime import datetime, timedelta
from importlib.metadata import PackageNotFoundError, version
from typing import TypeAlias

from aiokafka.errors import KafkaError

from consumer.app import run_until_signalled
from consumer.config import (
    CONFIG_PATH_ENV,
    Settings,
    load_ingress_settings,
    load_kafka_settings,
    load_settings,
)
from consumer.core.errors import ConfigError, ErrorCategory
from consumer.ingress.service import require_sources, run_ingress_until_signalled
from consumer.observability.logs import configure_logging
from consumer.simulator import SimulatorOptions, serve_forever
from consumer.tools.demo import run_demo
from consumer.tools.embedded_broker import EmbeddedBrokerError
from consumer.tools.local_broker import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    LocalBrokerError,
    serve_broker,
)
from consumer.tools.redrive import (
    DEFAULT_INPUT_LOOKBACK,
    SOURCES,
    Options,
    RedriveFilter,
    TopicReadIncomplete,
    parse_age,
    parse_sources,
    parse_time,
    run_redrive,
)
from consumer.tools.topics import TopicsError, provision_topics
from consumer.tools.traffic import run_traffic_until_signalled

DISTRIBUTION = "shipment-cancel-processor"

Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the line breaks of the examples and appends "(default: ...)" to every option
    that has one (unlike ``ArgumentDefaultsHelpFormatter``, not "None" or "False")."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        has_default = default is not None and default is not False and default != argparse.SUPPRESS
        # A help text naming its default already says it in words ("default: both").
        if not action.option_strings or not has_default or "default" in text:
            return text
        return f"{text} (default: %(default)s)"


def _command(
    commands: Commands, name: str, summary: str, *examples: str
) -> argparse.ArgumentParser:
    """A subcommand whose help starts with ``summary`` and ends with ``examples``."""
    return commands.add_parser(
        name,
        help=summary,
        description=f"{summary[0].upper()}{summary[1:]}.",
        epilog=_examples(*examples),
        formatter_class=HelpFormatter,
    )


def _examples(*lines: str) -> str:
    return "example:\n" + "\n".join(f"  {line}" for line in lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cancel-processor",
        description="Cancel shipments for order-cancelled events from Kafka.",
        epilog=_examples(
            "cancel-processor demo", "cancel-processor run --config examples/local.toml"
        )
        + "\n\n'cancel-processor COMMAND --help' shows a command's options and an example.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", title="commands"
    )

    run = _command(
        commands,
        "run",
        "run the processor until SIGTERM/SIGINT",
        "cancel-processor run --config examples/local.toml",
        "CANCEL_PROCESSOR_CONFIG=config.toml cancel-processor run",
    )
    _add_config(run)

    demo = _command(
        commands,
        "demo",
        "embedded broker + provider simulator + sample events, results printed",
        "cancel-processor demo --timeout 120",
    )
    demo.add_argument("--timeout", type=_seconds, default=60.0, help="seconds to wait for results")

    broker = _command(
        commands,
        "broker",
        "run the embedded Kafka-compatible broker (in memory) until Ctrl-C, for local work",
        "cancel-processor broker",
        "cancel-processor broker --port 19092",
    )
    broker.add_argument("--host", default=DEFAULT_HOST, help="address to listen on")
    broker.add_argument(
        "--port", type=_port, default=DEFAULT_PORT, help="port to listen on; 0 picks a free one"
    )

    sim = _command(
        commands,
        "simulate",
        "serve the providers' APIs (ShipStation, MVMNT) on loopback, with faults by shipment id",
        "cancel-processor simulate --port 8900 --latency-ms 50",
    )
    sim.add_argument("--host", default="127.0.0.1", help="address to listen on")
    sim.add_argument("--port", type=_port, default=8900, help="port to listen on")
    sim.add_argument("--latency-ms", type=float, default=0.0, help="added to every provider call")
    sim.add_argument(
        "--shipstation-api-key",
        default="sim-shipstation-key",
        help="the API-Key ShipStation calls must carry",
    )
    sim.add_argument(
        "--mvmnt-client-id",
        default="sim-mvmnt-client",
        help="the OAuth2 client id MVMNT token requests must carry",
    )
    sim.add_argument(
        "--mvmnt-client-secret",
        default="sim-mvmnt-secret",
        help="the OAuth2 client secret MVMNT token requests must carry",
    )
    sim.add_argument(
        "--mvmnt-static-token", default=None, help="also accept this Bearer token (static tokens)"
    )
    sim.add_argument(
        "--request-log-size", type=int, default=1000, help="requests GET /_admin/requests keeps"
    )

    topics = _command(
        commands,
        "topics",
        "create the topics from [kafka]/[topics] and verify existing ones",
        "cancel-processor topics --config examples/local.toml",
        "cancel-processor topics --config config.toml --check",
    )
    _add_config(topics, "reads only [kafka] and [topics]")
    topics.add_argument(
        "--check",
        action="store_true",
        help="create nothing; exit 1 when a topic is missing or differs from the config",
    )

    traffic = _command(
        commands,
        "demo-traffic",
        "publish sample events to the input topic at a steady rate (demos; never production)",
        "cancel-processor demo-traffic --config examples/local.toml --count 10",
    )
    _add_config(traffic, "reads only [kafka]")
    traffic.add_argument("--rate", type=float, default=2.0, help="events per second")
    traffic.add_argument(
        "--count", type=int, default=None, help="stop after this many events (default: never)"
    )

    _add_redrive(commands)

    ingress = _command(
        commands,
        "ingress",
        "serve signed order-cancelled webhooks and publish them to Kafka",
        "cancel-processor ingress --config config.toml",
    )
    _add_config(ingress, "[providers] is not read")
    return parser


def _version() -> str:
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def _add_config(command: argparse.ArgumentParser, reads: str = "") -> None:
    """``--config FILE``, defaulting to $CONFIG_PATH_ENV; ``reads`` says which tables it uses."""
    more = f"; {reads}" if reads else ""
    command.add_argument(
        "--config",
        default=os.environ.get(CONFIG_PATH_ENV),
        help=f"TOML config file (default: ${CONFIG_PATH_ENV}){more}",
    )


def _add_redrive(commands: Commands) -> None:
    redrive = _command(
        commands,
        "redrive",
        "re-publish DLQ records and retryable cancel-failed results to the input topic",
        "cancel-processor redrive --config config.toml --source failed --since 6h --dry-run",
    )
    _add_config(redrive, "reads only [kafka]")
    redrive.add_argument(
        "--source",
        action="append",
        choices=SOURCES,
        help="dlq and/or failed (repeatable; default: both)",
    )
    redrive.add_argument(
        "--category",
        action="append",
        choices=[str(c) for c in ErrorCategory],
        help="only failures of this error category (repeatable; default: all)",
    )
    redrive.add_argument(
        "--since", type=_time_arg, help="failed at or after: ISO 8601 time or an age (6h, 2d)"
    )
    redrive.add_argument("--until", type=_time_arg, help="failed before: ISO 8601 time or age")
    redrive.add_argument(
        "--dry-run", action="store_true", help="list what would be re-published; publish nothing"
    )
    redrive.add_argument(
        "--again",
        action="store_true",
        help="also re-publish sources an earlier redrive already re-published",
    )
    redrive.add_argument(
        "--input-lookback",
        type=_age_arg,
        default=DEFAULT_INPUT_LOOKBACK,
        help="how far before the oldest failure to look for its input event (default: 24h)",
    )


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port (0-65535)")
    return port


def _seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < seconds < float("inf"):  # also refuses nan
        raise argparse.ArgumentTypeError(f"{text} is not a positive number of seconds")
    return seconds


def _time_arg(text: str) -> datetime:
    try:
        return parse_time(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _age_arg(text: str) -> timedelta:
    try:
        return parse_age(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "run":
            return _run(args.config)
        if args.command == "demo":
            return _demo(args.timeout)
        if args.command == "broker":
            return _broker(args.host, args.port)
        if args.command == "simulate":
            return _simulate(args)
        if args.command == "ingress":
            return _ingress(args.config)
        if args.command == "topics":
            return _topics(args.config, check=args.check)
        if args.command == "demo-traffic":
            return _demo_traffic(args)
        if args.command == "redrive":
            return _redrive(args)
    except KeyboardInterrupt:
        return 130
    raise AssertionError(f"unhandled command {args.command}")


def _run(config_path: str | None) -> int:
    if not config_path:
        print(f"error: pass --config FILE or set {CONFIG_PATH_ENV}", file=sys.stderr)
        return 2
    try:
        settings = load_settings(config_path, os.environ)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not settings.providers:
        print(f"error: {config_path}: providers: no provider account configured", file=sys.stderr)
        return 2
    configure_logging(settings.telemetry.log_level, settings.telemetry.log_format, buffered=True)
    try:
        asyncio.run(run_until_signalled(settings))
    except ConfigError as exc:  # found at start-up, e.g. the ops HTTP port is taken
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _ingress(config_path: str | None) -> int:
    if not config_path:
        print(f"error: pass --config FILE or set {CONFIG_PATH_ENV}", file=sys.stderr)
        return 2
    try:
        settings = load_ingress_settings(config_path, os.environ)
        require_sources(settings)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.telemetry.log_level, settings.telemetry.log_format)
    try:
        asyncio.run(run_ingress_until_signalled(settings))
    except ConfigError as exc:  # e.g. the port is taken
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _demo(timeout: float) -> int:
    try:
        return asyncio.run(run_demo(timeout=timeout))
    except EmbeddedBrokerError as exc:  # e.g. the [demo] extra is not installed
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _broker(host: str, port: int) -> int:
    try:
        return asyncio.run(serve_broker(host, port))
    except LocalBrokerError as exc:  # the port is taken, the [demo] extra is missing
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _simulate(args: argparse.Namespace) -> int:
    configure_logging("INFO", "text")
    options = SimulatorOptions(
        host=args.host,
        port=args.port,
        latency_ms=args.latency_ms,
        shipstation_api_key=args.shipstation_api_key,
        mvmnt_client_id=args.mvmnt_client_id,
        mvmnt_client_secret=args.mvmnt_client_secret,
        mvmnt_static_token=args.mvmnt_static_token,
        request_log_size=args.request_log_size,
    )
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_simulate_until_sigterm(options))
    except OSError as exc:  # the port is taken, or the address is not this machine's
        print(f"error: cannot listen on {args.host}:{args.port}: {exc.strerror}", file=sys.stderr)
        return 1
    return 0


async def _simulate_until_sigterm(options: SimulatorOptions) -> None:
    """``serve_forever`` until SIGTERM, which stops it as cleanly as Ctrl-C does (exit 0)."""
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await serve_forever(options)


def _kafka_tool_settings(config_path: str | None) -> Settings | None:
    """Settings for a tool that only talks to the broker; None after printing why not."""
    if not config_path:
        print(f"error: pass --config FILE or set {CONFIG_PATH_ENV}", file=sys.stderr)
        return None
    try:
        return load_kafka_settings(config_path, os.environ)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None


def _topics(config_path: str | None, *, check: bool) -> int:
    settings = _kafka_tool_settings(config_path)
    if settings is None:
        return 2
    configure_logging("WARNING", "text")
    try:
        report = asyncio.run(provision_topics(settings.kafka, settings.topics, create=not check))
    except ConfigError as exc:  # TLS files unusable, login or certificate refused
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except TopicsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for finding in report.findings:
        print(finding.line())
    return 1 if report.failed() else 0


def _demo_traffic(args: argparse.Namespace) -> int:
    settings = _kafka_tool_settings(args.config)
    if settings is None:
        return 2
    if args.rate <= 0:
        print("error: --rate must be positive", file=sys.stderr)
        return 2
    configure_logging("INFO", "json")
    try:
        asyncio.run(run_traffic_until_signalled(settings.kafka, rate=args.rate, limit=args.count))
    except ConfigError as exc:  # TLS files unusable, login or certificate refused
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KafkaError as exc:
        where = settings.kafka.bootstrap_servers
        print(f"error: kafka broker at {where}: {exc}", file=sys.stderr)
        return 1
    return 0


def _redrive(args: argparse.Namespace) -> int:
    settings = _kafka_tool_settings(args.config)
    if settings is None:
        return 2
    configure_logging("WARNING", "text")
    options = Options(
        chosen=RedriveFilter(
            sources=parse_sources(args.source),
            categories=frozenset(args.category or ()),
            since=args.since,
            until=args.until,
            again=args.again,
        ),
        dry_run=args.dry_run,
        input_lookback=args.input_lookback,
    )
    try:
        asyncio.run(run_redrive(settings.kafka, options, out=print))
    except TopicReadIncomplete as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (KafkaError, ConfigError) as exc:
        print(f"error: kafka broker at {settings.kafka.bootstrap_servers}: {exc}", file=sys.stderr)
        return 1
    return 0
