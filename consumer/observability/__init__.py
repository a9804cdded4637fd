"""Traces, metrics, logs and the ops HTTP server."""
