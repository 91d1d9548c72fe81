"""Posting generator batches to the ingest API, as a carrier's system does.

A 503 is retried with the same body after a short pause, as docs/contract.md tells carriers to; anything else that is
not a full 202 stops the run, since the generator makes only valid events.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Final

import httpx
import orjson

from lastmile_dev.bench.core import Stack

RETRIES: Final = 20
RETRY_PAUSE_SECONDS: Final = 0.5


class PostError(RuntimeError):
    """The ingest API refused a batch the harness considers valid."""


def client(connections: int = 64) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.AsyncClient(timeout=httpx.Timeout(30.0), limits=limits)


class Poster:
    """Counts what it posted: events accepted, requests, 503 retries, and the latency of each 202."""

    def __init__(self, stack: Stack, http: httpx.AsyncClient) -> None:
        self.url = f"{stack.ingest_url}/v1/scans"
        self.headers = {
            carrier: {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
            for carrier, token in stack.carrier_tokens.items()
        }
        self.http = http
        self.accepted = 0
        self.requests = 0
        self.retries = 0
        self.latencies: list[float] = []  # seconds from sending to the 202, per request

    async def post(self, batch: list[dict[str, Any]]) -> float:
        """Post one single-carrier batch until it is accepted; return the time (monotonic) of the 202."""
        return await self.post_body(batch[0]["carrier"], orjson.dumps({"events": batch}))

    async def post_body(self, carrier: str, body: bytes) -> float:
        """Post one single-carrier batch, already serialised, until it is accepted; return the time of the 202."""
        headers = self.headers[carrier]
        for _attempt in range(RETRIES):
            started = time.monotonic()
            try:
                response = await self.http.post(self.url, content=body, headers=headers)
            except httpx.TransportError:
                self.retries += 1
                await asyncio.sleep(RETRY_PAUSE_SECONDS)
                continue
            answered = time.monotonic()
            self.requests += 1
            if response.status_code == 202:
                result = response.json()
                if result["rejected"]:
                    raise PostError(f"ingest rejected generated events: {result['rejected'][:3]}")
                self.accepted += int(result["accepted"])
                self.latencies.append(answered - started)
                return answered
            if response.status_code != 503:
                raise PostError(f"POST /v1/scans answered {response.status_code}: {response.text[:500]}")
            self.retries += 1
            await asyncio.sleep(RETRY_PAUSE_SECONDS)
        raise PostError(f"POST /v1/scans still failing after {RETRIES} attempts")
