"""Benchmarks (not tests): each ``bench_NAME`` module compares pemn-serve against its
baseline in the same run and writes its section of docs/benchmarks.md. Run them from
the repository root as ``python -m bench.bench_NAME`` (``make bench`` runs them all);
their fixtures come from ``pemn.testing``, never from ``tests/``."""

__all__: list[str] = []
