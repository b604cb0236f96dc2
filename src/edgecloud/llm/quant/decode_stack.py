"""One-stream decode: a Llama model's decoder layers in one C call (int4 or float32 weights).

At one token a step, each decoder layer is ~30 small calls in the module path (seven products,
norms, rotary, the cache write, attention, the activation, residual adds), and their Python,
dispatch and thread fork/join overhead is as large as the arithmetic: on SmolLM2-135M int4, 14.3 ms
a token of which ~8 ms is the products (session 6, docs/benchmarks.md). ``DecodeStack`` runs the
same layers in ``csrc/decode_stack.c``, inside one parallel region: int4 projections with the same
products as ``Int4Linear``'s one-row kernel (activations rounded to int8 per group of 32), float32
ones streaming the plain weight once. A float32 model's projections are packed for oneDNN
(``layers/packed.py``), a layout the C code cannot read, so the stack keeps a plain copy of them:
such a model holds its projection weights twice once it has decoded a single stream.
``EDGECLOUD_DECODE_STACK=0`` turns the stack off.

The runner (``ModelRunner._decode_stack``) hands it to the model (``StepContext.decode_stack``) for a
step that decodes exactly one token with nothing else in it, through the paged backend in every
layer group, with no adapters and no experts; every other step, and every model the stack does not
describe exactly (``unsupported`` says why), keeps the module path. Both compute the same function
up to float32 summation order (``tests/llm/test_decode_stack.py``). A step that may be abandoned
between layers (``StepContext.interrupt``) runs layer by layer, asking between them.
"""

from __future__ import annotations

import ctypes
import os

import torch

from edgecloud.llm.attention import cpu_kernels
from edgecloud.llm.attention.paged import PagedDecodeAttention
from edgecloud.llm.layers.attention import Attention
from edgecloud.llm.layers.mlp import GatedMLP
from edgecloud.llm.layers.norm import RMSNorm
from edgecloud.llm.layers.packed import PackedLinear
from edgecloud.llm.quant.linear import Int4Linear, activation_bits
from edgecloud.llm.step_context import StepContext


class _Layer(ctypes.Structure):
    _fields_ = [
        ("input_norm", ctypes.c_void_p), ("post_norm", ctypes.c_void_p),
        ("weights", ctypes.c_void_p * 4), ("scales", ctypes.c_void_p * 4),  # qkv, o, gate_up, down
        ("k_cache", ctypes.c_void_p), ("v_cache", ctypes.c_void_p), ("group", ctypes.c_int64),
    ]


class _GroupStep(ctypes.Structure):
    _fields_ = [("slot", ctypes.c_void_p), ("table", ctypes.c_void_p), ("context_len", ctypes.c_void_p)]


class _Shape(ctypes.Structure):
    _fields_ = [
        ("hidden", ctypes.c_int64), ("intermediate", ctypes.c_int64), ("heads", ctypes.c_int64),
        ("kv_heads", ctypes.c_int64), ("head_dim", ctypes.c_int64), ("block_size", ctypes.c_int64),
        ("eps", ctypes.c_float), ("scale", ctypes.c_float), ("dense", ctypes.c_int64),
    ]


class _Head(ctypes.Structure):
    _fields_ = [
        ("norm", ctypes.c_void_p), ("weights", ctypes.c_void_p), ("scales", ctypes.c_void_p),
        ("logits", ctypes.c_void_p), ("vocab", ctypes.c_int64), ("dense", ctypes.c_int64),
    ]


_ARGTYPES = (
    ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,  # hidden, layers, first, last
    ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,  # groups, cos, sin, shape
    ctypes.c_void_p, ctypes.c_int,  # head (or NULL), threads
)


def kernel() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    return cpu_kernels.compiled("edgecloud.llm.quant", ("q4_1_matmul.c", "decode_stack.c"),
                                "edgecloud_llama_decode_stack", _ARGTYPES, "the one-token decoder")


def _kind(projection: torch.nn.Module) -> str | None:
    """``int4``, ``dense`` (float32, plain or packed) or None (a projection the stack cannot run)."""
    if type(projection) is Int4Linear:
        return "int4" if projection.bias is None else None
    if type(projection) is torch.nn.Linear:
        plain = projection.bias is None and projection.weight.dtype == torch.float32
        return "dense" if plain and projection.weight.device.type == "cpu" else None
    if type(projection) is PackedLinear:
        return "dense" if projection.bias is None and projection.packed.dtype == torch.float32 else None
    return None


def unsupported(model: torch.nn.Module) -> str | None:
    """Why ``DecodeStack`` cannot run this model's layers (None: it can)."""
    from edgecloud.llm.models.llama import LlamaForCausalLM

    if type(model) is not LlamaForCausalLM:
        return f"{type(model).__name__} is not the Llama decoder"
    config = model.config
    if config.qk_norm or config.qkv_bias or config.o_bias or config.mlp_bias or config.hidden_act != "silu":
        return "q/k norms, biases or an activation other than SiLU"
    if config.head_dim % 16 or config.head_dim > 256 or config.hidden_size % 32 or config.intermediate_size % 32:
        return f"shapes the kernel does not take (head_dim {config.head_dim}, hidden {config.hidden_size})"
    if os.environ.get("EDGECLOUD_DECODE_STACK", "1") == "0":
        return "turned off (EDGECLOUD_DECODE_STACK=0)"
    if activation_bits() != 8 or kernel() is None:
        return "it is built for AVX-512 with VNNI only (or no C compiler)"
    kinds = set()
    for layer in model.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        if type(attn) is not Attention or type(mlp) is not GatedMLP or type(layer.input_layernorm) is not RMSNorm:
            return "a layer that is not plain attention + gated MLP (MoE, MLA, adapters)"
        kinds.update(_kind(p) for p in (attn.qkv_proj, attn.o_proj, mlp.gate_up_proj, mlp.down_proj))
        if None in kinds or len(kinds) > 1:
            return "projections that are not all int4 (Int4Linear) or all float32, without bias"
        norms = (layer.input_layernorm.weight, layer.post_attention_layernorm.weight)
        if any(w.dtype != torch.float32 for w in norms) or attn.kv_cache is None:
            return "norms not in float32, or no KV cache bound"
        if any(c.dtype != torch.float32 or not c.is_contiguous() or c.device.type != "cpu" for c in attn.kv_cache):
            return "a KV cache that is not contiguous float32 on the CPU"
    if model.model.layers[0].self_attn.rotary.cos.dtype != torch.float32:
        return "rotary tables not in float32"
    return None


class DecodeStack:
    """The decoder layers of one Llama model with their bound KV caches, as the C kernel reads them
    (pointers taken once: the model must not replace a module or a cache afterwards — ``current``
    checks)."""

    def __init__(self, model: torch.nn.Module, layer_group: tuple[int, ...], block_size: int) -> None:
        reason = unsupported(model)
        if reason is not None:
            raise ValueError(f"the one-token decoder cannot run this model: {reason}")
        config = model.config
        layers = model.model.layers
        self.model = model
        self.num_layers = len(layers)
        self.num_groups = max(layer_group) + 1
        self.rotary = layers[0].self_attn.rotary
        self.half = config.head_dim // 2
        self._function = kernel()
        self.dense = _kind(layers[0].self_attn.qkv_proj) == "dense"
        self._plain: list[torch.Tensor] = []  # float32 weights unpacked from oneDNN's layout, kept here
        self._layers = (_Layer * self.num_layers)()
        for i, layer in enumerate(layers):
            attn, mlp = layer.self_attn, layer.mlp
            projections = (attn.qkv_proj, attn.o_proj, mlp.gate_up_proj, mlp.down_proj)
            entry = self._layers[i]
            entry.input_norm = layer.input_layernorm.weight.data_ptr()
            entry.post_norm = layer.post_attention_layernorm.weight.data_ptr()
            for j, p in enumerate(projections):
                if self.dense:
                    weight = p.weight.detach().contiguous()
                    if weight.data_ptr() != p.weight.data_ptr():
                        self._plain.append(weight)
                    entry.weights[j] = weight.data_ptr()
                else:
                    entry.weights[j] = p.codes.data_ptr()
                    entry.scales[j] = p.scales.data_ptr()
            entry.k_cache, entry.v_cache = (c.data_ptr() for c in attn.kv_cache)
            entry.group = layer_group[i]
        self._shape = _Shape(
            config.hidden_size, config.intermediate_size, config.num_attention_heads, config.num_key_value_heads,
            config.head_dim, block_size, config.rms_norm_eps, config.head_dim**-0.5, int(self.dense),
        )
        self._groups = (_GroupStep * self.num_groups)()
        self._head = self._lm_head(model)
        # what the pointers were taken from (checked each step: a replaced module makes this stale)
        self._sources = self._identity()

    @staticmethod
    def _lm_head(model: torch.nn.Module) -> _Head | None:
        """The final norm and LM head as the kernel reads them, where that needs no copy of the head:
        int4, a plain float32 one, or (oneDNN-packed) tied to the embedding; else None (the model's
        own modules run them)."""
        head, embed = model.lm_head, model.model.embed_tokens
        norm = model.model.norm.weight
        if norm.dtype != torch.float32 or getattr(head, "bias", None) is not None:
            return None
        if type(head) is Int4Linear:
            return _Head(norm.data_ptr(), head.codes.data_ptr(), head.scales.data_ptr(), None, head.out_features, 0)
        tied = model.config.tie_word_embeddings and type(embed) is torch.nn.Embedding
        weight = embed.weight if tied else head.weight if type(head) is torch.nn.Linear else None
        if weight is None or weight.dtype != torch.float32 or not weight.is_contiguous():
            return None
        return _Head(norm.data_ptr(), weight.data_ptr(), None, None, weight.shape[0], 1)

    def _identity(self) -> tuple[object, ...]:
        layers = self.model.model.layers
        return (self.model.lm_head, self.model.model.embed_tokens, *(
            x for layer in (layers[0], layers[-1])
            for x in (layer.self_attn.qkv_proj, layer.mlp.down_proj, *layer.self_attn.kv_cache)))

    def current(self) -> bool:
        """Whether the model still holds the modules and caches this stack points at."""
        return all(a is b for a, b in zip(self._identity(), self._sources, strict=True))

    @staticmethod
    def takes(ctx: StepContext) -> bool:
        """Whether the step is one it runs: a single decoding token, the paged backend everywhere."""
        return ctx.lora is None and ctx.moe is None and all(
            not m.prefill and m.num_prefill_tokens == 0 and m.slot_mapping.numel() == 1
            and type(m.decode_backend) is PagedDecodeAttention and m.decode_plan.block_table.dtype == torch.int64
            for m in ctx.attention
        )

    def __call__(
        self, hidden: torch.Tensor, positions: torch.Tensor, ctx: StepContext, first: int, last: int,
        logits: bool = False,
    ) -> torch.Tensor | None:
        """Runs layers ``[first, last)`` on ``hidden`` (``[1, hidden]`` float32, updated in place). With
        ``logits`` and the last layer run, also the final norm and LM head where the stack holds them:
        returns ``[1, vocab]`` float32 logits, else None (the caller runs the model's own)."""
        for g, metadata in enumerate(ctx.attention):
            plan = metadata.decode_plan
            self._groups[g].slot = metadata.slot_mapping.data_ptr()
            self._groups[g].table = plan.block_table.data_ptr()
            self._groups[g].context_len = plan.context_lens.data_ptr()
        out = None
        head = None
        if logits and last == self.num_layers and self._head is not None:
            out = torch.empty(1, self._head.vocab, dtype=torch.float32)
            self._head.logits = out.data_ptr()
            head = ctypes.addressof(self._head)
        row = int(positions[0]) * self.half * 4  # bytes into the [positions, head_dim / 2] tables
        status = self._function(
            hidden.data_ptr(), ctypes.addressof(self._layers), first, last, ctypes.addressof(self._groups),
            self.rotary.cos.data_ptr() + row, self.rotary.sin.data_ptr() + row, ctypes.addressof(self._shape),
            head, torch.get_num_threads(),
        )
        if status != 0:
            raise MemoryError(f"the one-token decoder failed (status {status}: -1 out of memory)")
        return out
