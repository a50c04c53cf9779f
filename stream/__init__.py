"""Shared Kafka plumbing: settings, topic names, event schemas, producers, the Faust app factory."""
