"""Layer groups: decoder layers whose KV is kept the same way, each with its own pool of blocks.

Two kinds:

- ``full``: every token's KV is kept.
- ``sink_window``: OmniAttn's compressed layers (OmniInfer, arXiv 2511.22481; StreamingLLM's
  attention sink plus a recent window, arXiv 2309.17453), in whole blocks. Once a request's prompt
  is computed, the group keeps only its first ``sink_blocks`` blocks and the last ``window_blocks``
  blocks up to the one being written; the blocks between go back to the group's pool. The prompt
  itself is prefilled with full attention (the group holds all of it until then), decode attends to
  the sink and the window: "prefill full, decode compressed", as OmniAttn.

The window counts the block being written: a decoding token at position ``t`` sees the sink and the
tokens of blocks ``t // block_size + 1 - window_blocks`` .. ``t // block_size``, between
``(window_blocks - 1) * block_size + 1`` and ``window_blocks * block_size`` recent tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

GroupKind = Literal["full", "sink_window"]
GROUP_KINDS: tuple[GroupKind, ...] = ("full", "sink_window")


@dataclass(frozen=True)
class LayerGroup:
    """Decoder layers whose KV is kept alike. ``kind``: ``full`` keeps every token's KV;
    ``sink_window`` keeps ``sink_blocks`` + ``window_blocks`` blocks of a decoding request."""

    name: str
    layers: tuple[int, ...]
    kind: GroupKind = "full"
    sink_blocks: int = 0
    window_blocks: int = 0

    def __post_init__(self) -> None:
        if self.kind not in GROUP_KINDS:
            raise ValueError(
                f"layer group {self.name!r}: kind must be one of {', '.join(GROUP_KINDS)}, got {self.kind!r}"
            )
        if self.kind == "full" and (self.sink_blocks or self.window_blocks):
            raise ValueError(f"layer group {self.name!r}: a full group has no sink or window")
        if self.kind == "sink_window" and (self.sink_blocks < 0 or self.window_blocks < 1):
            raise ValueError(
                f"layer group {self.name!r}: sink_blocks must be >= 0 and window_blocks >= 1, got "
                f"{self.sink_blocks} and {self.window_blocks}"
            )

    @property
    def compressed(self) -> bool:
        return self.kind == "sink_window"

    def drop_floor(self, num_computed_tokens: int, block_size: int) -> int:
        """Blocks ``sink_blocks`` .. this index (excluded) are no longer needed by a request whose
        prompt is computed and that has computed ``num_computed_tokens`` tokens: its next token's
        window starts at the returned block."""
        if not self.compressed:
            return 0
        return max(self.sink_blocks, num_computed_tokens // block_size + 1 - self.window_blocks)

    def keeps_at_hit(self, index: int, num_hit_blocks: int) -> bool:
        """Whether a request whose first ``num_hit_blocks`` blocks come from the cache needs block
        ``index`` of them in this group: the sink, and the window ending at the hit's last block."""
        if not self.compressed:
            return True
        return index < self.sink_blocks or index >= num_hit_blocks - self.window_blocks

    @property
    def kept_blocks(self) -> int:
        """Blocks a decoding request holds in this group at most (compressed groups)."""
        return self.sink_blocks + self.window_blocks


def pool_sizes(
    groups: list[LayerGroup], layer_blocks: int, compressed_fraction: float, min_compressed_blocks: int
) -> list[int]:
    """Blocks per group's pool from a memory budget of ``layer_blocks`` blocks of one layer.

    OmniAttn's rule: a compressed group's pool holds ``compressed_fraction`` (a fifth in their
    code) of a full group's blocks, the rest of the memory going to full groups. Because prefill is
    full attention, a compressed pool holds at least ``min_compressed_blocks`` (one longest prompt);
    when that leaves full groups fewer blocks than compressed ones, every pool gets the same."""
    full = sum(len(g.layers) for g in groups if not g.compressed)
    compressed = sum(len(g.layers) for g in groups if g.compressed)
    if not compressed or not full:
        return [layer_blocks // (full + compressed)] * len(groups)
    n_full = int(layer_blocks // (full + compressed_fraction * compressed))
    n_compressed = -(-n_full * compressed_fraction // 1)
    if n_compressed < min_compressed_blocks:
        n_compressed = min_compressed_blocks
        n_full = (layer_blocks - compressed * n_compressed) // full
    if n_full < n_compressed:
        n_full = n_compressed = layer_blocks // (full + compressed)
    return [int(n_compressed if g.compressed else n_full) for g in groups]
