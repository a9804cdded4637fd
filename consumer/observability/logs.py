"""Structured logs: one JSON object per line (or plain text for people at a terminal)."""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson
from opentelemetry import trace

from consumer.runtime.periodic import every

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        # The span the line was logged in: search the trace backend by this trace_id.
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            entry.setdefault("trace_id", format(context.trace_id, "032x"))
            entry.setdefault("span_id", format(context.span_id, "016x"))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class TextFormatter(logging.Formatter):
    """``2026-12-06T05:40:01.123Z info    consumer.runner: message key=value ...``: the time
    in UTC to the millisecond, as the JSON lines' ``ts``, so lines from several processes
    line up."""

    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(
            f"{k}={v}"
            for k, v in record.__dict__.items()
            if k not in _STANDARD and not k.startswith("_")
        )
        seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        stamp = f"{seconds}.{int(record.msecs):03d}Z"
        line = f"{stamp} {record.levelname.lower():7} {record.name}: {record.getMessage()}"
        if extras:
            line = f"{line} {extras}"
        if record.exc_info:
            line = f"{line}\n{self.formatException(record.exc_info)}"
        return line


# ``run`` writes its lines through a buffer: WARNING and above at once, the rest at least
# this often (``flushing_logs``) and whenever the buffer fills.
FLUSH_SECONDS = 0.5
_BUFFER_BYTES = 64 * 1024


class BufferedStreamHandler(logging.StreamHandler[TextIO]):
    """A ``StreamHandler`` that leaves lines below WARNING in the stream's buffer.

    A plain handler writes and flushes every line: a system call per result event, about
    17 µs of the processor's half millisecond per event at thousands of lines a second.
    Lines wait at most ``FLUSH_SECONDS`` while ``flushing_logs`` runs; a warning or an
    error flushes everything before it, so nothing an operator must see is held back.
    """

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.stream.write(self.format(record) + self.terminator)
            if record.levelno >= logging.WARNING:
                self.flush()
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)


def _buffered_stderr() -> TextIO | None:
    """Standard error's file descriptor behind a buffer of our own (``sys.stderr`` flushes
    at every line), or ``None`` when there is no descriptor (stderr replaced in-process)."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        return None
    return open(
        fd, "w", buffering=_BUFFER_BYTES, encoding="utf-8", errors="backslashreplace", closefd=False
    )


@contextlib.asynccontextmanager
async def flushing_logs(period: float = FLUSH_SECONDS) -> AsyncIterator[None]:
    """Flush every log handler each ``period`` seconds while the block runs, and at its end."""
    try:
        async with every(period, lambda _: _flush_handlers()):
            yield
    finally:
        _flush_handlers()


def _flush_handlers() -> None:
    for handler in logging.getLogger().handlers:
        handler.flush()


def configure_logging(level: str, fmt: str, *, buffered: bool = False) -> None:
    """One handler on the root logger, to standard error; ``buffered`` (for ``run``, which
    runs ``flushing_logs``): see ``BufferedStreamHandler``. ``level`` in any case."""
    level = level.upper()
    # Neither format prints the source line, thread or process of a record: don't look
    # them up for every line (the logging HOWTO's "Optimization" switches).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    stream = _buffered_stderr() if buffered else None
    handler: logging.Handler = (
        logging.StreamHandler(sys.stderr) if stream is None else BufferedStreamHandler(stream)
    )
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Library chatter (connection churn, per-request lines) is noise at INFO.
    for noisy in ("httpx", "httpcore", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
    # aiokafka logs every failed connect at ERROR during an outage; the runner reports broker
    # trouble once, in its own words. Its raw lines are there at DEBUG.
    logging.getLogger("aiokafka").setLevel(logging.DEBUG if level == "DEBUG" else logging.CRITICAL)
