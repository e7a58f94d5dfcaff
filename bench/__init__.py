"""recallcore benchmarks: `python -m bench.run --mode quick|full|smoke` (see bench/README.md)."""
