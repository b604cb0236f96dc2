"""`edgecloud serve` from the command line: a port in use is reported at once (before the model
loads), a bad model is one line, and the ready line names the model and the URL."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import start_server


def serve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgecloud.cli", "serve", *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONUNBUFFERED": "1"})


# real_clock: "before the model loads" is a time; the 30 s bound is many times an import of the CLI
@pytest.mark.real_clock
def test_a_port_in_use_fails_before_the_model_loads() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        start = time.monotonic()
        result = serve("--port", str(port), "--model", "demo")
        elapsed = time.monotonic() - start
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}: the address is already in use" in result.stderr
    assert "Traceback" not in result.stderr
    assert elapsed < 30  # an import of the CLI, not a model load


def test_a_missing_model_is_one_line() -> None:
    result = serve("--port", "0", "--model", "/nonexistent/model")
    assert result.returncode == 2
    assert result.stderr.strip().endswith(
        "model '/nonexistent/model' does not exist (pass an HF model directory, a .gguf file, or 'demo')")
    assert "Traceback" not in result.stderr


def test_the_ready_line_names_the_model_and_the_url(model_dir: Path, tmp_path: Path) -> None:
    server = start_server(model_dir, tmp_path / "server.log")
    try:
        assert server.process.stdout is not None
        ready = server.process.stdout.readline()
        assert ready.startswith(f"edgecloud serve: ready: {model_dir} on {server.base_url} ")
        assert "chat template: " in ready
    finally:
        assert server.stop() == 0
