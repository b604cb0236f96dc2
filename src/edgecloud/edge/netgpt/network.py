"""Live measurement of the edge-to-cloud path: RTT and bandwidth from probes of the cloud endpoint.

A probe is two requests on the router's kept-alive connection to any OpenAI-compatible server:
``GET /health`` (tiny both ways: one round trip) and a ``POST /v1/chat/completions`` whose body
is ``probe_bytes`` of padding for a model that does not exist, which the server reads whole and
answers with a short 404. The second takes one round trip more than the first plus the upload of
the padding, so ``bandwidth = 8 * probe_bytes / (t_post - t_get)``. Estimates are smoothed
(EWMA). A probe that fails or times out raises ``ProbeError`` saying what and where; the monitor
keeps the last estimate, marks it stale, and reports the error.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass

import httpx

from edgecloud.edge.netgpt.policy import NetworkState

log = logging.getLogger(__name__)

PROBE_MODEL = "netgpt-bandwidth-probe"


class ProbeError(Exception):
    """A network probe failed (the cloud did not answer, or too slowly)."""


@dataclass
class ProbeSample:
    rtt_ms: float
    bandwidth_mbps: float
    at: float


class NetworkMonitor:
    def __init__(self, base_url: str, client: httpx.AsyncClient, *, probe_bytes: int = 64_000, alpha: float = 0.5,
                 timeout_s: float = 5.0, prior: NetworkState | None = None) -> None:
        if probe_bytes < 1000:
            raise ValueError(f"probe_bytes must be >= 1000, got {probe_bytes}")
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        self.base_url = base_url.rstrip("/")
        self.client = client
        self.probe_bytes = probe_bytes
        self.alpha = alpha
        self.timeout_s = timeout_s
        self.estimate: NetworkState | None = prior
        self.last_error: str | None = None
        self.last_probe_at: float | None = None
        self.samples: list[ProbeSample] = []
        padding = "x" * probe_bytes
        self._body = json.dumps({"model": PROBE_MODEL, "messages": [{"role": "user", "content": padding}]}).encode()

    async def _timed(self, method: str, path: str, content: bytes | None = None) -> float:
        url = f"{self.base_url}{path}"
        start = time.perf_counter()
        try:
            response = await self.client.request(method, url, content=content, timeout=self.timeout_s,
                                                 headers={"Content-Type": "application/json"} if content else None)
            await response.aread()
        except httpx.TimeoutException as error:
            raise ProbeError(f"network probe {method} {url} timed out after {self.timeout_s:g} s") from error
        except httpx.HTTPError as error:
            raise ProbeError(f"network probe {method} {url} failed: {type(error).__name__}: {error}") from error
        return time.perf_counter() - start

    async def probe(self) -> NetworkState:
        """One measurement; updates and returns the estimate (raises ``ProbeError``)."""
        try:
            await self._timed("GET", "/health")  # (re)opens the connection: handshakes are not the RTT
            rtt = await self._timed("GET", "/health")
            upload = await self._timed("POST", "/v1/chat/completions", self._body)
        except ProbeError as error:
            self.last_error = str(error)
            log.warning("%s; keeping the last estimate %s", error, self.estimate)
            raise
        transfer = max(upload - rtt, 1e-4)
        sample = ProbeSample(rtt * 1e3, 8 * len(self._body) / transfer / 1e6, time.monotonic())
        self.samples.append(sample)
        del self.samples[:-100]
        if self.estimate is None or self.last_probe_at is None:
            self.estimate = NetworkState(sample.bandwidth_mbps, sample.rtt_ms)
        else:
            a = self.alpha
            self.estimate = NetworkState(a * sample.bandwidth_mbps + (1 - a) * self.estimate.bandwidth_mbps,
                                         a * sample.rtt_ms + (1 - a) * self.estimate.rtt_ms)
        self.last_probe_at = sample.at
        self.last_error = None
        return self.estimate

    def reset(self) -> None:
        """Forget the estimate (the path changed: the next probe starts afresh)."""
        self.estimate = None
        self.last_probe_at = None

    async def run(self, interval_s: float) -> None:
        """Probe every ``interval_s`` until cancelled; failures are logged and kept in ``last_error``."""
        while True:
            with contextlib.suppress(ProbeError):  # logged, and kept in last_error
                await self.probe()
            await asyncio.sleep(interval_s)

    def stale(self, max_age_s: float) -> bool:
        return self.last_probe_at is None or time.monotonic() - self.last_probe_at > max_age_s
