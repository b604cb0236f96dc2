"""The real side of a real-vs-simulated comparison: an ``edgecloud cluster serve`` process on this
machine, driven over HTTP by the serving benchmark's client (``edgecloud.bench``), exactly as a
user would run and measure it. The simulator never imports the server; it starts the command.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from edgecloud.bench.client import Endpoint
from edgecloud.bench.metrics import RequestRecord
from edgecloud.bench.runner import run_requests
from edgecloud.bench.workload import BenchRequest
from edgecloud.llm.config import EngineConfig


def engine_args(config: EngineConfig) -> list[str]:
    """``edgecloud cluster serve``'s engine options for ``config``."""
    args = ["--dtype", config.dtype, "--block-size", str(config.block_size),
            "--kv-cache-memory-mb", str(config.kv_cache_memory_mb), "--max-num-seqs", str(config.max_num_seqs),
            "--max-num-batched-tokens", str(config.max_num_batched_tokens), "--seed", str(config.seed),
            "--threads", str(config.num_threads or 1)]
    if config.model is not None:
        args += ["--model", config.model]
    if config.max_model_len is not None:
        args += ["--max-model-len", str(config.max_model_len)]
    if not config.enable_prefix_caching:
        args.append("--no-prefix-caching")
    return args


@dataclass
class RealCluster:
    """``edgecloud cluster serve`` with ``args`` on a free port, up until the context exits."""

    args: Sequence[str]
    start_timeout_s: float = 300.0
    base_url: str = ""
    process: subprocess.Popen[str] | None = None
    log: Any = field(default=None, repr=False)

    def __enter__(self) -> RealCluster:
        self.log = tempfile.NamedTemporaryFile("w+", prefix="edgecloud-cluster-", suffix=".log", delete=False)
        command = [sys.executable, "-m", "edgecloud.cli", "cluster", "serve", "--port", "0", "--log-level", "warning",
                   *self.args]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=self.log, text=True,
                                        env={**os.environ, "PYTHONUNBUFFERED": "1"})
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        match = re.search(r"router on (http://[\w.:\[\]]+:\d+)", line)
        if match is None:
            self.__exit__(None, None, None)
            raise RuntimeError(f"the cluster did not start: {line!r} {self.log_text()}")
        self.base_url = match.group(1)
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the cluster exited while starting: {self.log_text()}")
            try:
                with urllib.request.urlopen(f"{self.base_url}/health", timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.3)
        self.__exit__(None, None, None)
        raise RuntimeError(f"the cluster was not up within {self.start_timeout_s:.0f} s: {self.log_text()}")

    def log_text(self) -> str:
        if self.log is None:
            return ""
        self.log.flush()
        return Path(self.log.name).read_text()[-2000:]

    def get_json(self, path: str) -> Any:
        with urllib.request.urlopen(f"{self.base_url}{path}", timeout=10) as response:
            return json.loads(response.read())

    def metrics(self) -> str:
        with urllib.request.urlopen(f"{self.base_url}/metrics", timeout=10) as response:
            return response.read().decode()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.log is not None:
            self.log.close()
            os.unlink(self.log.name)
            self.log = None


def replay(cluster: RealCluster, model: str, requests: Sequence[BenchRequest], arrivals: Sequence[float],
           timeout_s: float = 600.0) -> list[RequestRecord]:
    """Sends ``requests`` at ``arrivals`` (streamed completions, greedy, ``ignore_eos``)."""
    endpoint = Endpoint(cluster.base_url, model)
    return asyncio.run(run_requests(endpoint, requests, arrivals, timeout_s=timeout_s))


def metric_values(text: str, name: str) -> dict[str, float]:
    """Samples of one Prometheus metric by their label string (``instance="mixed0",...``)."""
    values = {}
    for line in text.splitlines():
        if line.startswith(name):
            head, value = line.rsplit(" ", 1)
            labels = head[len(name):]
            if labels and not labels.startswith("{"):
                continue
            values[labels.strip("{}")] = float(value)
    return values
