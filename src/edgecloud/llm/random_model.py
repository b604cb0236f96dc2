"""Random-weight HF checkpoints of any supported architecture, built locally with no download.

Tests use them to compare the engine with transformers; benchmarks use them to get a model of a
given size. The tokenizer is a byte-level BPE trained in milliseconds on a fixed text, so every
string round-trips.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

_CORPUS = (
    "The quick brown fox jumps over the lazy dog. Edge and cloud share the work of serving "
    "language models: prefixes are cached, requests are batched, and tokens stream back. "
    "0123456789 +-*/=()[]{}<>,.;:!?'\" A stitch in time saves nine. Hello world, hello edge!"
)

ARCH_CONFIGS: dict[str, dict[str, Any]] = {
    "llama": {"architectures": ["LlamaForCausalLM"], "model_type": "llama"},
    "mistral": {"architectures": ["MistralForCausalLM"], "model_type": "mistral", "sliding_window": 4096},
    "qwen2": {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "tie_word_embeddings": True},
    "qwen3": {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "tie_word_embeddings": True},
    # Mixture-of-experts layouts (docs/moe.md): 8 experts, top-2, each family's routing.
    "mixtral": {"architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "num_local_experts": 8,
                "num_experts_per_tok": 2},
    "qwen2_moe": {"architectures": ["Qwen2MoeForCausalLM"], "model_type": "qwen2_moe", "num_experts": 8,
                  "num_experts_per_tok": 2, "moe_intermediate_size": 64, "shared_expert_intermediate_size": 96,
                  "norm_topk_prob": False},
    "qwen3_moe": {"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "num_experts": 8,
                  "num_experts_per_tok": 2, "moe_intermediate_size": 64, "norm_topk_prob": True},
    # DeepSeek-V3's layout: a first dense layer, grouped sigmoid routing with a correction bias and
    # routed scaling, a shared expert, and multi-head latent attention (K and V dims differ).
    "deepseek_v3": {"architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3",
                    "num_hidden_layers": 3, "first_k_dense_replace": 1, "n_routed_experts": 8,
                    "num_experts_per_tok": 2, "n_group": 4, "topk_group": 2, "n_shared_experts": 1,
                    "moe_intermediate_size": 32, "routed_scaling_factor": 2.5, "q_lora_rank": 48,
                    "kv_lora_rank": 32, "qk_nope_head_dim": 16, "qk_rope_head_dim": 8, "v_head_dim": 24,
                    "head_dim": 8},  # transformers: head_dim is the rotary part
}


PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {},
    # About 30M parameters: the size the engine benchmark's goals are stated for.
    "30m": {"vocab_size": 8192, "hidden_size": 512, "intermediate_size": 1536, "num_hidden_layers": 6,
            "num_attention_heads": 8, "num_key_value_heads": 4, "max_position_embeddings": 2048},
    # The embedded demo model's shapes (5.8M parameters) with a 4k context: cheap enough for a CPU
    # cluster to replay long-prompt traces (Mooncake) without cutting their shared prefixes.
    "6m-4k": {"vocab_size": 4096, "hidden_size": 256, "intermediate_size": 768, "num_hidden_layers": 6,
              "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 4096},
}


def write_tokenizer(out: Path, vocab_size: int) -> int:
    """Trains and saves a byte-level BPE (``tokenizer.json`` + ``tokenizer_config.json``);
    returns the real vocabulary size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|bos|>", "<|eos|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<|bos|>",
        "eos_token": "<|eos|>",
        "add_bos_token": False,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "chat_template": (
            "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}"
        ),
    }))
    return tok.get_vocab_size()


def write_random_model(
    out: Path,
    arch: str = "llama",
    seed: int = 0,
    dtype: str = "float32",
    **overrides: Any,
) -> Path:
    """Writes a random-weight ``arch`` model to ``out``; ``overrides`` go into the HF config."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if arch not in ARCH_CONFIGS:
        raise ValueError(f"arch must be one of {sorted(ARCH_CONFIGS)}, got {arch!r}")
    wanted_vocab = int(overrides.pop("vocab_size", 512))
    # A tiny corpus caps the BPE's merges; ids past the tokenizer's end decode to nothing.
    vocab = max(wanted_vocab, write_tokenizer(out, wanted_vocab))
    fields: dict[str, Any] = {
        "vocab_size": vocab,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 1024,
        "rms_norm_eps": 1e-6,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "tie_word_embeddings": False,
        **ARCH_CONFIGS[arch],
        **overrides,
    }
    model_type = fields.pop("model_type")
    fields.setdefault("head_dim", fields["hidden_size"] // fields["num_attention_heads"])
    config = AutoConfig.for_model(model_type, **fields)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    # Random init is near-uniform at the output; a wider spread gives tests decisive argmaxes.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if (name.endswith("weight") and param.dim() == 2) or param.dim() == 3:  # 3-D: fused experts
                param.normal_(0.0, 0.08)
        for name, buffer in model.named_buffers():
            if name.endswith("e_score_correction_bias"):  # so that routing tests exercise the bias
                buffer.uniform_(-0.05, 0.05)
    model.save_pretrained(out)
    return out
