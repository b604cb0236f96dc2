"""The engine keeps freed activation memory in the process (edgecloud.llm.host_memory): a block
below the threshold comes from malloc's heap, not a mapping of its own that ``free`` unmaps."""

import json
import os
import platform
import subprocess
import sys

import pytest

PROBE = r"""
import ctypes, json, torch
from edgecloud.llm import host_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                                     "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
on = host_memory.keep_freed_memory()
x = torch.empty(48 << 20, dtype=torch.uint8)  # above glibc's largest dynamic mmap threshold (32 MiB)
mapped = libc.mallinfo2().hblkhd
del x
after_free = libc.mallinfo2()
print(json.dumps({"on": on, "mapped": mapped, "heap_after_free": after_free.arena}))
"""


def probe(tune: str) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "EDGECLOUD_MALLOC_TUNE": tune}, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting is glibc's mallopt; elsewhere it is a no-op")
def test_activation_sized_blocks_come_from_the_heap_and_stay_after_free() -> None:
    tuned, default = probe("1"), probe("0")
    assert tuned["on"] is True and default["on"] is False
    assert default["mapped"] >= 48 << 20  # glibc's default: a mapping of its own, unmapped on free
    assert tuned["mapped"] < 48 << 20  # tuned: from the heap ...
    assert tuned["heap_after_free"] >= 48 << 20  # ... which is not trimmed when it is freed


def test_an_engine_on_a_cpu_turns_it_on(llama_dir) -> None:
    from edgecloud.llm import host_memory
    from edgecloud.llm.config import EngineConfig
    from edgecloud.llm.engine import LLMEngine

    LLMEngine(EngineConfig(model=str(llama_dir), kv_cache_memory_mb=8))
    glibc = platform.libc_ver()[0] == "glibc"
    assert host_memory._done is (glibc and os.environ.get("EDGECLOUD_MALLOC_TUNE") != "0")
