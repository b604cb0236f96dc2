"""``InprocClient.shutdown`` is bounded: a core thread stuck in a call that never returns is left
behind (a daemon thread) after ``shutdown_timeout_s``, with a warning that names it and shows where
it is stuck, and the calls waiting on it fail instead of waiting for ever."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from edgecloud.llm import EngineConfig
from edgecloud.llm.core_client import InprocClient
from edgecloud.llm.model_source import resolve_model
from edgecloud.llm.output_processor import EngineDeadError


def _client(llama_dir: Path, timeout_s: float) -> InprocClient:
    config = EngineConfig(model=str(llama_dir), dtype="float32", kv_cache_memory_mb=1)
    return InprocClient(config, resolve_model(str(llama_dir)), shutdown_timeout_s=timeout_s)


def test_a_stuck_core_thread_is_left_behind_after_the_bound_with_a_warning(
    llama_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    release = threading.Event()

    async def run() -> None:
        client = _client(llama_dir, timeout_s=0.5)
        await client.start(lambda outputs: None, lambda reason: None)
        assert client.core is not None
        thread = client._thread
        assert thread is not None

        def stuck_control(op: str, args: Any) -> Any:
            release.wait(60)  # a core call that does not return
            return None

        client.core.control = stuck_control  # type: ignore[method-assign]
        waiting = asyncio.ensure_future(client.control("stats"))
        await asyncio.sleep(0.2)  # the core thread is now inside the call
        began = time.monotonic()
        try:
            async with asyncio.timeout(10):  # the old shutdown joined without a bound: it would end here
                await client.shutdown()
            took = time.monotonic() - began
            assert 0.4 <= took < 3.0, took
            assert thread.is_alive() and thread.daemon
            with pytest.raises(EngineDeadError, match=r"did not stop within 0\.5 s"):
                await waiting
        finally:
            release.set()  # let the thread see Shutdown and end, so the test leaves nothing behind
        await asyncio.to_thread(thread.join, 10)
        assert not thread.is_alive()

    with caplog.at_level(logging.WARNING, logger="edgecloud.llm.core_client"):
        asyncio.run(run())
    [warning] = [r for r in caplog.records if "did not stop" in r.getMessage()]
    assert "edgecloud-engine-core" in warning.getMessage() and "release.wait" in warning.getMessage()


def test_a_core_thread_that_stops_is_joined_at_once(llama_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def run() -> None:
        client = _client(llama_dir, timeout_s=30)
        await client.start(lambda outputs: None, lambda reason: None)
        thread = client._thread
        assert thread is not None
        began = time.monotonic()
        await client.shutdown()
        assert time.monotonic() - began < 5 and not thread.is_alive()
        await client.shutdown()  # a second call does nothing

    with caplog.at_level(logging.WARNING, logger="edgecloud.llm.core_client"):
        asyncio.run(run())
    assert not [r for r in caplog.records if "did not stop" in r.getMessage()]
