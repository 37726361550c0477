"""Benchmarks of the bridge (see README: make bench)."""
