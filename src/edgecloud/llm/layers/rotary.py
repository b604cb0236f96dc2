"""Rotary position embeddings (RoFormer) and the frequency scalings published checkpoints use.

``default`` and ``linear`` (position interpolation, Chen et al. 2023); ``llama3`` (Llama 3.1's
wavelength-banded scaling); ``yarn`` (Peng et al. 2023, "YaRN", sec. 3.2-3.4: NTK-by-parts ramp
between ``beta_fast`` and ``beta_slow`` plus an attention factor applied to cos/sin, as Qwen2.5 long
context and DeepSeek-V3 use it); ``dynamic`` NTK and ``longrope`` (Phi-3). The formulas follow
transformers' ``modeling_rope_utils`` so a checkpoint behaves as its authors trained it.

Two of them, dynamic NTK and LongRoPE, are defined in transformers per forward pass: the frequencies
depend on the longest sequence in the current batch. That cannot hold in a paged KV cache: keys are
rotated once, when written, and are later read by other steps, other batch mixes and (with prefix
caching) other requests. A key must mean the same thing whoever reads it, so this engine fixes one
table per engine, as vLLM does: dynamic NTK uses the base transformers computes at the stretched
context length (``factor`` x ``max_position_embeddings``); LongRoPE uses ``long_factor`` when the
engine's context (``max_positions``) exceeds the pre-training context and ``short_factor`` otherwise.
On sequences no longer than the pre-training context, transformers uses the unscaled frequencies for
dynamic NTK; this engine does not (the table does not change with the batch).
"""

from __future__ import annotations

import math

import torch

from edgecloud.llm.config import RopeConfig
from edgecloud.llm.errors import ModelLoadError


def _yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def attention_factor(rope: RopeConfig) -> float:
    """The factor cos and sin are multiplied by (YaRN and LongRoPE temper the attention softmax)."""
    if rope.attention_factor is not None:
        return rope.attention_factor
    if rope.rope_type == "yarn":
        if rope.mscale and rope.mscale_all_dim:
            return _yarn_mscale(rope.factor, rope.mscale) / _yarn_mscale(rope.factor, rope.mscale_all_dim)
        return _yarn_mscale(rope.factor)
    if rope.rope_type == "longrope" and rope.factor > 1.0:
        return math.sqrt(1 + math.log(rope.factor) / math.log(rope.original_max_position_embeddings))
    return 1.0


def inverse_frequencies(rope: RopeConfig, head_dim: int, max_positions: int | None = None) -> torch.Tensor:
    """``[head_dim / 2]`` inverse frequencies; ``max_positions`` (the engine's context) picks
    LongRoPE's short or long factors."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim
    base = rope.theta
    if rope.rope_type == "dynamic":
        # transformers' NTK-aware base at seq_len = factor * max_position_embeddings, fixed (see
        # the module docstring): factor * seq_len / max_len - (factor - 1) = factor^2 - factor + 1.
        stretch = rope.factor * rope.factor - rope.factor + 1
        base = rope.theta * stretch ** (head_dim / (head_dim - 2))
    inv_freq = 1.0 / (base**exponents)
    if rope.rope_type == "linear":
        inv_freq = inv_freq / rope.factor
    elif rope.rope_type == "llama3":
        inv_freq = _llama3(rope, inv_freq)
    elif rope.rope_type == "yarn":
        inv_freq = _yarn(rope, inv_freq, head_dim)
    elif rope.rope_type == "longrope":
        long = max_positions is not None and max_positions > rope.original_max_position_embeddings
        factors = rope.long_factor if long else rope.short_factor
        if len(factors) != head_dim // 2:
            name = "long_factor" if long else "short_factor"
            raise ModelLoadError(
                f"config.json: rope {name} has {len(factors)} entries; head_dim {head_dim} needs {head_dim // 2}"
            )
        inv_freq = inv_freq / torch.tensor(factors, dtype=torch.float64)
    return inv_freq.float()


def _llama3(rope: RopeConfig, inv_freq: torch.Tensor) -> torch.Tensor:
    # Llama 3.1: keep high frequencies, divide low ones by `factor`, blend in between.
    old_len = rope.original_max_position_embeddings
    low_wavelen = old_len / rope.low_freq_factor
    high_wavelen = old_len / rope.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    smooth = (old_len / wavelen - rope.low_freq_factor) / (rope.high_freq_factor - rope.low_freq_factor)
    blended = (1 - smooth) * inv_freq / rope.factor + smooth * inv_freq
    inv_freq = torch.where(wavelen > low_wavelen, inv_freq / rope.factor, inv_freq)
    is_medium = (wavelen <= low_wavelen) & (wavelen >= high_wavelen)
    return torch.where(is_medium, blended, inv_freq)


def _yarn(rope: RopeConfig, inv_freq: torch.Tensor, head_dim: int) -> torch.Tensor:
    # Dimensions that turn more than beta_fast times over the original context keep their frequency
    # (extrapolation); those turning fewer than beta_slow times are divided by `factor`
    # (interpolation); a linear ramp joins the two.
    def dim_of(rotations: float) -> float:
        original = rope.original_max_position_embeddings
        return head_dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(rope.theta))

    low, high = dim_of(rope.beta_fast), dim_of(rope.beta_slow)
    if rope.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_dim - 1)
    if low == high:
        high += 0.001  # as transformers, to avoid dividing by zero
    ramp = ((torch.arange(head_dim // 2, dtype=torch.float64) - low) / (high - low)).clamp(0, 1)
    extrapolate = 1 - ramp
    return inv_freq / rope.factor * (1 - extrapolate) + inv_freq * extrapolate


class RotaryEmbedding(torch.nn.Module):
    """Precomputed cos/sin tables; ``forward`` rotates q and k at the given positions."""

    def __init__(self, rope: RopeConfig, head_dim: int, max_positions: int) -> None:
        super().__init__()
        inv_freq = inverse_frequencies(rope, head_dim, max_positions)
        angles = torch.outer(torch.arange(max_positions, dtype=torch.float32), inv_freq)
        scale = attention_factor(rope)
        self.register_buffer("cos", angles.cos() * scale, persistent=False)
        self.register_buffer("sin", angles.sin() * scale, persistent=False)
        # One module serves every layer, and a step passes the same positions tensor to each: the
        # rows are gathered once per step, not once per layer.
        self._gathered: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def _tables(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._gathered is None or self._gathered[0] is not positions:
            self._gathered = (positions, self.cos[positions].unsqueeze(1), self.sin[positions].unsqueeze(1))
        return self._gathered[1], self._gathered[2]  # [T, 1, D/2]

    def forward(
        self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        cos, sin = self._tables(positions)
        return _rotate(q, cos, sin), _rotate(k, cos, sin)

    def rotate(self, positions: torch.Tensor, heads: torch.Tensor) -> torch.Tensor:
        """Rotates ``[T, heads, D]`` (q and k heads side by side: one set of kernels for both)."""
        cos, sin = self._tables(positions)
        return _rotate(heads, cos, sin)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # Half-split layout (as in HF Llama checkpoints): pairs are (i, i + D/2).
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).to(x.dtype)
