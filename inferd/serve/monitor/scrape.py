"""One `GET /metrics` of one server, read with prometheus_client's own parser, and why it failed when it did."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
from prometheus_client.parser import text_string_to_metric_families

from inferd.errors import InferdError

Labels = dict[str, str]


class ScrapeFailed(Exception):
    """A server that did not answer with metrics this time: `inferd top` shows it as down and keeps watching."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Scrape:
    """Every sample of one exposition, by sample name, and when it arrived (monotonic seconds)."""

    at: float
    samples: dict[str, list[tuple[Labels, float]]] = field(default_factory=dict)

    def series(self, name: str) -> list[tuple[Labels, float]]:
        return self.samples.get(name, [])

    def value(self, name: str) -> float | None:
        """An unlabelled series' value (the process_* ones), None where the server does not report it."""
        return next((value for labels, value in self.series(name) if not labels), None)

    def by_model(self, name: str, **labels: str) -> Iterator[tuple[str, Labels, float]]:
        """The samples of a model-labelled series (optionally matching more labels), model name first.

        Requests for no loaded model carry model="" (the server's bound on its label set); they belong to no row.
        """
        for sample_labels, value in self.series(name):
            model = sample_labels.get("model", "")
            if model and all(sample_labels.get(key) == wanted for key, wanted in labels.items()):
                yield model, sample_labels, value


def metrics_url(text: str) -> str:
    """The `/metrics` address of a server given as a URL (`http://host:8000`), a bare `host:port`, or the metrics
    address itself; `inferd serve --metrics-port` serves the same exposition on a port of its own."""
    given = text.strip()
    if "://" not in given:
        given = "http://" + given
    try:
        url = httpx.URL(given)
    except httpx.InvalidURL as exc:
        raise InferdError(f"{text!r} is not a URL ({exc}); give a server as http://HOST:PORT") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise InferdError(f"{text!r} is not an http(s) address; give a server as http://HOST:PORT")
    if url.port is not None and not 0 < url.port < 65536:
        raise InferdError(f"{text!r} is not a URL (port {url.port} is not 1-65535); give a server as http://HOST:PORT")
    path = url.path.rstrip("/")
    return str(url.copy_with(path=path if path.endswith("/metrics") else path + "/metrics", query=None,
                             fragment=None))


async def scrape(client: httpx.AsyncClient, url: str) -> Scrape:
    """The exposition at `url`, or ScrapeFailed with the reason a person can act on."""
    try:
        response = await client.get(url)
    except httpx.TimeoutException:
        raise ScrapeFailed(f"no answer within {client.timeout.read}s") from None
    except httpx.ConnectError as exc:
        raise ScrapeFailed(f"cannot connect ({_cause(exc)}); is `inferd serve` running there?") from None
    except httpx.HTTPError as exc:
        raise ScrapeFailed(f"{type(exc).__name__}: {_cause(exc)}") from None
    arrived = time.monotonic()
    if response.status_code in (401, 403):
        raise ScrapeFailed(f"answered {response.status_code}: the server wants its API key; "
                           "pass --api-key or set INFERD_API_KEY")
    if response.status_code != 200:
        raise ScrapeFailed(f"answered {response.status_code} to GET {response.url.path}; is this an inferd server?")
    samples: dict[str, list[tuple[Labels, float]]] = {}
    try:
        for family in text_string_to_metric_families(response.text):
            for sample in family.samples:
                samples.setdefault(sample.name, []).append((dict(sample.labels), float(sample.value)))
    except ValueError as exc:
        raise ScrapeFailed(f"GET {response.url.path} is not a Prometheus exposition ({exc})") from None
    if not any(name.startswith("inferd_") for name in samples):
        raise ScrapeFailed(f"GET {response.url.path} has no inferd_* series; is this an inferd server?")
    return Scrape(arrived, samples)


def _cause(exc: BaseException) -> str:
    """httpx wraps the socket error; its innermost one, by its errno ('Connection refused'), is the useful part."""
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno).lower()
    return str(exc) or type(exc).__name__
