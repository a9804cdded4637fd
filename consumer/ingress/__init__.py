"""The webhook ingress: signed HTTP requests in, order-cancelled records on Kafka out.

``signature`` (pure HMAC checks), ``validation`` (the processor's own model), ``idempotency``
(bounded per-process window), ``publisher`` (the only aiokafka user here), ``server`` (the
aiohttp app), ``service`` (composition and shutdown), ``openapi`` (the generated document).
"""
