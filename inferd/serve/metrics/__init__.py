"""Prometheus metrics of one server: inferd's own series (`series`) and Triton's names for the same numbers (`triton`)."""
