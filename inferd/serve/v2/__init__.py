"""Open Inference Protocol (KServe V2, Triton) support, kept apart from the HTTP layer so it can be tested on bytes."""
