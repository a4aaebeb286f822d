"""Benchmarks shipped with zt: `zt bench node` (docs/PERFORMANCE.md)."""
