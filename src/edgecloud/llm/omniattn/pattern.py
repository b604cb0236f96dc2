"""A KV layer pattern: which decoder layers keep full KV and which only a sink and a window.

OmniAttn (OmniInfer, arXiv 2511.22481) compresses whole layers, chosen by a search
(``search.py``), so tensor parallelism needs no extra synchronisation. The pattern is a JSON file
that ``edgecloud omniattn search`` writes and ``serve``/``generate`` take
(``--kv-layer-pattern FILE``, ``EngineConfig.kv_layer_pattern``)::

    {"format": "edgecloud-kv-layer-pattern/1", "block_size": 16, "sink_blocks": 8,
     "window_blocks": 24, "layers": ["full", "sink_window", ...], "info": {...}}

``info`` records where the pattern came from (model, budget, the search and its cost); the engine
ignores it.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgecloud.llm.errors import InvalidRequestError
from edgecloud.llm.kv_cache.layer_group import GROUP_KINDS, LayerGroup

FORMAT = "edgecloud-kv-layer-pattern/1"

# OmniAttn's open configuration in tokens (a sink of 128 and a window of 384 tokens: 1 + 3 blocks of
# 128), in blocks of the engine's default 16 tokens.
DEFAULT_SINK_BLOCKS = 8
DEFAULT_WINDOW_BLOCKS = 24


@dataclass(frozen=True)
class LayerPattern:
    layers: tuple[str, ...]  # per decoder layer: "full" or "sink_window"
    sink_blocks: int = DEFAULT_SINK_BLOCKS
    window_blocks: int = DEFAULT_WINDOW_BLOCKS
    block_size: int = 16
    info: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        for i, kind in enumerate(self.layers):
            if kind not in GROUP_KINDS:
                raise InvalidRequestError(
                    f"layers[{i}] must be one of {', '.join(GROUP_KINDS)}, got {kind!r}", "layers"
                )
        if not self.layers:
            raise InvalidRequestError("layers must name at least one layer", "layers")
        if self.sink_blocks < 0:
            raise InvalidRequestError(f"sink_blocks must be >= 0, got {self.sink_blocks}", "sink_blocks")
        if self.window_blocks < 1:
            raise InvalidRequestError(f"window_blocks must be >= 1, got {self.window_blocks}", "window_blocks")
        if self.block_size < 1:
            raise InvalidRequestError(f"block_size must be >= 1, got {self.block_size}", "block_size")

    # -- building ---------------------------------------------------------------------------------

    @classmethod
    def compressing(cls, num_layers: int, compressed: set[int] | frozenset[int], **options: Any) -> LayerPattern:
        """Layers in ``compressed`` keep a sink and a window, the others full KV."""
        return cls(tuple("sink_window" if i in compressed else "full" for i in range(num_layers)), **options)

    @classmethod
    def full(cls, num_layers: int, **options: Any) -> LayerPattern:
        return cls.compressing(num_layers, set(), **options)

    @classmethod
    def streaming(cls, num_layers: int, **options: Any) -> LayerPattern:
        """StreamingLLM: every layer keeps a sink and a window."""
        return cls.compressing(num_layers, set(range(num_layers)), **options)

    @classmethod
    def random(cls, num_layers: int, num_compressed: int, seed: int, **options: Any) -> LayerPattern:
        """``num_compressed`` layers drawn uniformly at random: the control at the same budget."""
        chosen = set(random.Random(seed).sample(range(num_layers), num_compressed))
        return cls.compressing(num_layers, chosen, **options)

    # -- reading ----------------------------------------------------------------------------------

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def compressed(self) -> frozenset[int]:
        return frozenset(i for i, kind in enumerate(self.layers) if kind == "sink_window")

    @property
    def kept_tokens(self) -> int:
        """Tokens a compressed layer keeps for a decoding request at most."""
        return (self.sink_blocks + self.window_blocks) * self.block_size

    def kv_fraction(self, context_tokens: int) -> float:
        """KV held at ``context_tokens`` tokens (layers x tokens), as a fraction of full KV: each
        compressed layer holds the sink and the window's whole blocks."""
        blocks = -(-context_tokens // self.block_size)
        kept = min(blocks, self.sink_blocks + self.window_blocks) * self.block_size
        compressed = len(self.compressed)
        full = self.num_layers - compressed
        return (full * context_tokens + compressed * min(kept, context_tokens)) / (self.num_layers * context_tokens)

    def layer_groups(self) -> list[LayerGroup]:
        """One group for the full layers and one for the compressed layers (those that exist)."""
        full = tuple(i for i, kind in enumerate(self.layers) if kind == "full")
        compressed = tuple(sorted(self.compressed))
        groups = []
        if full:
            groups.append(LayerGroup("full", full))
        if compressed:
            groups.append(LayerGroup("sink_window", compressed, "sink_window", self.sink_blocks, self.window_blocks))
        return groups

    def describe(self) -> str:
        """``F`` / ``c`` per layer, e.g. ``FFcFc``."""
        return "".join("c" if kind == "sink_window" else "F" for kind in self.layers)

    # -- files ------------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "block_size": self.block_size, "sink_blocks": self.sink_blocks,
                "window_blocks": self.window_blocks, "layers": list(self.layers), "info": self.info}

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=1) + "\n")

    @classmethod
    def from_json(cls, raw: Any, source: str = "pattern") -> LayerPattern:
        if not isinstance(raw, dict):
            raise InvalidRequestError(f"{source}: a KV layer pattern is a JSON object", "kv_layer_pattern")
        if raw.get("format") != FORMAT:
            raise InvalidRequestError(f"{source}: format must be {FORMAT!r}, got {raw.get('format')!r}",
                                      "kv_layer_pattern")
        layers = raw.get("layers")
        if not isinstance(layers, list):
            raise InvalidRequestError(f"{source}: layers must be a list of layer kinds", "kv_layer_pattern")
        numbers = {}
        for name in ("block_size", "sink_blocks", "window_blocks"):
            value = raw.get(name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise InvalidRequestError(f"{source}: {name} must be an integer, got {value!r}", "kv_layer_pattern")
            numbers[name] = value
        try:
            return cls(tuple(layers), info=dict(raw.get("info") or {}), **numbers)
        except InvalidRequestError as error:
            raise InvalidRequestError(f"{source}: {error}", "kv_layer_pattern") from None

    @classmethod
    def load(cls, path: Path | str) -> LayerPattern:
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise InvalidRequestError(
                f"kv_layer_pattern file {str(path)!r} does not exist", "kv_layer_pattern"
            ) from None
        except json.JSONDecodeError as error:
            raise InvalidRequestError(f"{path}: not valid JSON ({error})", "kv_layer_pattern") from None
        return cls.from_json(raw, str(path))

    def check(self, num_layers: int, block_size: int) -> None:
        """Raises ``InvalidRequestError`` when this pattern does not fit a model and engine."""
        if self.num_layers != num_layers:
            raise InvalidRequestError(
                f"kv_layer_pattern names {self.num_layers} layers but the model has {num_layers}", "kv_layer_pattern"
            )
        if self.block_size != block_size:
            raise InvalidRequestError(
                f"kv_layer_pattern counts sink and window in blocks of {self.block_size} tokens but block_size is "
                f"{block_size}", "kv_layer_pattern"
            )
