"""Carrier-facing HTTP API: authenticate, validate, publish scan events to Kafka."""
