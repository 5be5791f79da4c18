"""Watching several servers at once: each refresh scrapes them all together and compares with the last scrape."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import httpx

from inferd.serve.access import key_headers
from inferd.serve.monitor.sample import ServerSample, compare, down
from inferd.serve.monitor.scrape import Scrape, ScrapeFailed, metrics_url, scrape


class Monitor:
    """The servers to watch and each one's last good scrape; a server that stops answering is down until it answers
    again, and its rates resume from the scrape before the gap (or start over if it restarted)."""

    def __init__(self, servers: Sequence[str], api_key: str | None = None, timeout_s: float = 2.0) -> None:
        self.servers = list(servers)
        self._urls = {server: metrics_url(server) for server in self.servers}  # a bad URL fails here, before any wait
        self._client = httpx.AsyncClient(headers=key_headers(api_key), timeout=timeout_s)
        self._last: dict[str, Scrape] = {}

    async def poll(self) -> list[ServerSample]:
        """One refresh of every server, in the order they were given."""
        return list(await asyncio.gather(*(self._poll(server) for server in self.servers)))

    async def _poll(self, server: str) -> ServerSample:
        try:
            now = await scrape(self._client, self._urls[server])
        except ScrapeFailed as failed:
            return down(server, failed.reason)
        sample = compare(server, self._last.get(server), now)
        self._last[server] = now
        return sample

    async def aclose(self) -> None:
        await self._client.aclose()
