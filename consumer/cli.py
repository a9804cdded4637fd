"""Command line: argument parsing only; the work lives in app, demo and simulator."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections.abc import Sequence

from consumer.app import run_until_signalled
from consumer.config import CONFIG_PATH_ENV, load_settings
from consumer.demo import run_demo
from consumer.errors import ConfigError
from consumer.logs import configure_logging
from consumer.simulator import SimulatorOptions, serve_forever


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cancel-processor",
        description="Cancel shipments for order-cancelled events from Kafka.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run the processor until SIGTERM/SIGINT")
    run.add_argument(
        "--config",
        default=os.environ.get(CONFIG_PATH_ENV),
        help=f"TOML config file (default: ${CONFIG_PATH_ENV})",
    )

    demo = commands.add_parser(
        "demo", help="embedded broker + provider simulator + sample events, results printed"
    )
    demo.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for results")

    sim = commands.add_parser("simulate", help="serve the providers' APIs on loopback")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8900)
    sim.add_argument("--latency-ms", type=float, default=0.0, help="added to every provider call")
    sim.add_argument("--shipstation-api-key", default="sim-shipstation-key")
    sim.add_argument("--mvmnt-client-id", default="sim-mvmnt-client")
    sim.add_argument("--mvmnt-client-secret", default="sim-mvmnt-secret")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "run":
            return _run(args.config)
        if args.command == "demo":
            return asyncio.run(run_demo(timeout=args.timeout))
        if args.command == "simulate":
            return _simulate(args)
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
    configure_logging(settings.telemetry.log_level, settings.telemetry.log_format)
    asyncio.run(run_until_signalled(settings))
    return 0


def _simulate(args: argparse.Namespace) -> int:
    configure_logging("INFO", "text")
    options = SimulatorOptions(
        host=args.host,
        port=args.port,
        latency_ms=args.latency_ms,
        shipstation_api_key=args.shipstation_api_key,
        mvmnt_client_id=args.mvmnt_client_id,
        mvmnt_client_secret=args.mvmnt_client_secret,
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_forever(options))
    return 0
