"""A real ``edgecloud serve`` subprocess on a free loopback port, serving a tiny random-weight
Llama written by transformers, shared by the server tests."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from edgecloud.llm.random_model import write_random_model

# Both the server and the offline engine the tests compare it with run one torch thread: the
# machine has two cores, and equal thread counts give equal float reductions.
ENGINE_ARGS = ["--threads", "1", "--kv-cache-memory-mb", "16", "--max-num-seqs", "64", "--seed", "0"]
OFFLINE_OPTIONS = {"num_threads": 1, "kv_cache_memory_mb": 16, "max_num_seqs": 64, "seed": 0}


@dataclass
class ServerProcess:
    process: subprocess.Popen[str]
    base_url: str
    model: str
    log_path: Path
    banner: str = ""  # the first line the server printed

    def metrics(self) -> dict[str, float]:
        """``/metrics`` samples by name (labels dropped; one model, so names are unique)."""
        text = httpx.get(f"{self.base_url}/metrics", timeout=10).text
        samples: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name_labels, value = line.rsplit(" ", 1)
                name = name_labels.split("{", 1)[0]
                labels = re.findall(r'(\w+)="([^"]*)"', name_labels)
                extra = ",".join(f"{k}={v}" for k, v in labels if k not in ("model_name",))
                samples[f"{name}[{extra}]" if extra else name] = float(value)
        return samples

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                return self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise
        return self.process.returncode


def start_server(model_dir: Path, log_path: Path, *extra: str) -> ServerProcess:
    command = [
        sys.executable, "-m", "edgecloud.cli", "serve", "--model", str(model_dir), "--port", "0",
        "--log-level", "warning", *ENGINE_ARGS, *extra,
    ]
    log = log_path.open("w")
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=log, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    match = re.search(r"on (http://127\.0\.0\.1:\d+)", line)
    if match is None:
        process.kill()
        raise RuntimeError(f"server did not start: {line!r}\n{log_path.read_text()}")
    server = ServerProcess(process, match.group(1), str(model_dir), log_path, line.strip())
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{server.base_url}/health", timeout=5).status_code == 200:
                return server
        except httpx.TransportError:
            time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"server never became healthy:\n{log_path.read_text()}")


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_model(tmp_path_factory.mktemp("server-model") / "llama", arch="llama")


@pytest.fixture(scope="session")
def server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = start_server(model_dir, tmp_path_factory.mktemp("server-log") / "server.log")
    yield process
    assert process.stop() == 0, process.log_path.read_text()
