"""Benchmarks: engine latency per backend × precision, with inferd's own overhead and a PyTorch baseline."""
