"""Benchmarks that print what they measure (`make bench`)."""
