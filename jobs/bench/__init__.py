"""Benchmarks, the one-file baseline server and the HTTP fuzzer: measurement tools, not user jobs."""
