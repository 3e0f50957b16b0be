"""Benchmarks that measure the proxy against a baseline in the same run."""
