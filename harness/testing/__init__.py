"""Test support: tiny random models for the tests and benchmarks.

Nothing in the tool imports this package; it builds randomly initialised models of several
architectures offline, small enough for exact Jacobians, so tests need no downloads.
"""
