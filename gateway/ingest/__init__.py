"""Ingest: the inbound protocols' services that make what arrives durable on the bus before they answer."""
