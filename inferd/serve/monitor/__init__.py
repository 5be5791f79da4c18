"""`inferd top`'s arithmetic: scrape servers' `/metrics`, and turn two scrapes into rates and latency quantiles.

It reads a server as Prometheus would, from the outside, so it watches any inferd server (or a metrics port) and
many of them at once; the rendering lives with the command in `inferd.cli`.
"""
