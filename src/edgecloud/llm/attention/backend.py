"""Decode-attention backends: the interface the engine's model code calls.

Prefill attention is compute-bound and the same for every backend (``prefill.py``). Decode
attention is memory-bound, and that is where backends differ: the dense paged backend reads each
sequence's KV separately; the prefix-aware backend (PAT, arXiv 2511.22333) reads KV shared by
several sequences once per pack. A backend sees one step's decode sequences as a
``DecodeBatch`` (block tables and context lengths) and never the engine itself.

Per step the engine calls ``plan`` once and then ``forward`` once per layer with that plan, so
any scheduling work (tree building, packing) is paid once per step, not once per layer.

KV cache layout, per layer: ``k_cache``/``v_cache`` of shape
``[num_blocks, block_size, num_kv_heads, head_dim]``; token ``t`` of a sequence lives in block
``block_table[t // block_size]`` at offset ``t % block_size``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from edgecloud.llm.attention.prefix_tree import block_table_array


@dataclass
class DecodeBatch:
    """The decode sequences of one engine step, in batch order.

    ``context_lens[i]`` counts every token whose KV is in the cache for sequence ``i``, the token
    being decoded included (its K/V are written before attention runs). ``block_tables[i]``
    holds at least ``ceil(context_lens[i] / block_size)`` physical block ids. Sequences that
    share a prefix share the physical blocks of that prefix (prefix caching, ``n > 1``).
    """

    block_tables: list[list[int]]
    context_lens: list[int]
    block_size: int
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def __post_init__(self) -> None:
        if len(self.block_tables) != len(self.context_lens):
            raise ValueError(
                f"block_tables has {len(self.block_tables)} rows but context_lens has "
                f"{len(self.context_lens)}"
            )

    @property
    def num_seqs(self) -> int:
        return len(self.context_lens)

    def block_table_tensor(self) -> torch.Tensor:
        """``[num_seqs, max_blocks]`` int64, rows padded with block 0 (masked by length)."""
        # filled in numpy: a per-row torch.tensor cost ~30 us a row, the host's largest share of
        # a 64-sequence decode step on a GPU
        table = block_table_array(self.block_tables, np.asarray(self.context_lens, dtype=np.int64), self.block_size)
        return torch.from_numpy(np.maximum(table, 0)).to(self.device)

    def context_lens_tensor(self) -> torch.Tensor:
        return torch.tensor(self.context_lens, dtype=torch.int64, device=self.device)


class DecodeAttentionBackend(ABC):
    """One decode-attention algorithm. Stateless across steps unless it caches plans itself."""

    name: ClassVar[str]

    @abstractmethod
    def plan(self, batch: DecodeBatch) -> Any:
        """Per-step preparation shared by all layers (index tensors, packs, masks)."""

    @abstractmethod
    def forward(
        self,
        plan: Any,
        query: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        scale: float,
    ) -> torch.Tensor:
        """Attention of one new query per sequence over its cached context.

        ``query``: ``[num_seqs, num_q_heads, head_dim]``; ``num_q_heads`` is a multiple of the
        cache's ``num_kv_heads`` (GQA/MQA). Returns ``[num_seqs, num_q_heads, head_dim]`` in the
        query's dtype.
        """
