"""Provider simulator: ShipStation v2 and MVMNT on one port, with shipment state and faults.

Part of the product (demo, integration and load tests). Routes, all under ``base_url``:

ShipStation, header ``API-Key``::

    PUT  /shipstation/v2/shipments/{shipment_id}/cancel   204 | 400 invalid_status | 404
    GET  /shipstation/v2/shipments/{shipment_id}
    GET  /shipstation/v2/labels?shipment_id=&label_status=&page=&page_size=
    PUT  /shipstation/v2/labels/{label_id}/void

MVMNT, ``Authorization: Bearer`` from the token endpoint (or the static token)::

    POST /mvmnt/oauth2/token                  form: grant_type=client_credentials, client_id,
                                              client_secret
    POST /mvmnt/v1/shipments/{id}/cancel[?by=id|key]   200 | 409 problem+json | 404
    GET  /mvmnt/v1/shipments/{id}[?by=id|key]

Admin, loopback clients only::

    POST /_admin/faults    {"provider", "shipment_id", "fault"}   (grammar: faults.py)
    PUT  /_admin/latency   {"latency_ms"}
    PUT  /_admin/accounts/{provider}   any of {"rate_limit_per_minute", "latency_ms",
                                       "down_seconds", "down_mode"}   (accounts.py)
    GET  /_admin/accounts/{provider}   GET /_admin/calls?provider=
    GET  /_admin/stats     GET /_admin/requests?limit=N     POST /_admin/reset
"""

from consumer.simulator.accounts import AccountMode
from consumer.simulator.faults import FaultSpec, parse_fault
from consumer.simulator.options import SimulatorOptions
from consumer.simulator.recorder import ProviderCall
from consumer.simulator.server import Simulator, serve_forever

__all__ = [
    "AccountMode",
    "FaultSpec",
    "ProviderCall",
    "Simulator",
    "SimulatorOptions",
    "parse_fault",
    "serve_forever",
]
