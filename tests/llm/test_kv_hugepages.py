"""The KV pool is allocated untouched, advised to use huge pages, then zeroed (edgecloud.llm.kv_cache.hugepages)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from edgecloud.llm.kv_cache import hugepages

THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def test_the_pool_is_zeros_of_the_shape_asked() -> None:
    pool = hugepages.zeros((70, 16, 4, 64), torch.float32, "cpu")
    assert pool.shape == (70, 16, 4, 64) and pool.dtype == torch.float32
    assert not pool.any()


@pytest.mark.skipif(not sys.platform.startswith("linux") or not THP.is_file() or "[never]" in THP.read_text(),
                    reason="transparent huge pages are off or absent here")
def test_a_pool_larger_than_a_huge_page_is_advised() -> None:
    pool = torch.empty(3 * hugepages.HUGE_PAGE // 4, dtype=torch.float32)  # 6 MiB: a whole aligned 2 MiB inside
    assert hugepages._advise_huge(pool)
    assert not hugepages._advise_huge(torch.empty(1000))  # smaller than one huge page: nothing to advise


def test_it_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGECLOUD_KV_HUGEPAGES", "0")
    called = []
    monkeypatch.setattr(hugepages, "_advise_huge", lambda tensor: called.append(tensor) or True)
    assert not hugepages.zeros((4, 16, 2, 8), torch.float32, "cpu").any()
    assert called == []
