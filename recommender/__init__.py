"""Streaming scorer and concept-drift tracking."""
