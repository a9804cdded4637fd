"""Operator commands: demo, traffic, topics, redrive, schemas, the embedded broker."""
