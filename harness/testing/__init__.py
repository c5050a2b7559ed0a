"""Test support: tiny random models for the tests and benchmarks, and the small helpers
their tests share.

Nothing in the tool imports this package. :mod:`~harness.testing.tiny_models` builds
randomly initialised models of several architectures offline, small enough for exact
Jacobians, so tests need no downloads; :mod:`~harness.testing.pass_counter` counts the
model sweeps a method really runs; :mod:`~harness.testing.results_frames` builds sweep
results by hand for the analysis, expectation and report tests;
:mod:`~harness.testing.llama_cpp_check` runs llama.cpp on an exported control vector beside
powersteer's own steering; :mod:`~harness.testing.small_behaviors` cuts a shipped organism
behavior down for the Ray test and benchmark.
"""
