"""Benchmarks of ddet_ops and of the DDet models (see bench_dynconv.py)."""
