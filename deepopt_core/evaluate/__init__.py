"""Benchmarking and quality metrics of saved models (see :func:`deepopt_core.evaluate.benchmark.benchmark_models`)."""
