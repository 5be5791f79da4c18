"""The load generator `inferd loadtest` and the server benchmarks (benchmarks/loadgen.py) share.

One client core, so that both measure the same thing the same way: the HTTP clients and the Triton transports
(`clients`, `transports`), the request bodies a model's metadata calls for (`bodies`), the closed loop and its
records (`records`), the perf_analyzer-style stable windows and the concurrency sweep (`windows`, `sweep`), and
the report's pictures (`plot`). Nothing here imports the server: a load generator is a client.
"""
