"""Fixtures of the ops checks: the session's broker and the provider simulator, shared with
the integration tests. Tests that need the broker carry the ``integration`` marker."""

from __future__ import annotations

from tests.integration.conftest import bootstrap_servers, simulator
from tests.integration.test_kafka_security import strict_broker

__all__ = ["bootstrap_servers", "simulator", "strict_broker"]
