"""The integration fixtures (the Kafka node, simulator, per-test topics) for the ingress's
broker tests; only tests marked ``integration`` use them."""

from tests.integration.conftest import bootstrap_servers, settings, simulator

__all__ = ["bootstrap_servers", "settings", "simulator"]
