"""Benchmarks: each writes one JSON result per run under bench/results/ (`make bench`)."""
