"""Train edgecloud's embedded demo model: a tiny Llama-architecture causal LM, from scratch, on fortunes.

The engine needs a default model so that `make serve` works offline with no argument. This script
builds one that is honest about what it is: a few million parameters, trained for minutes on the
fortune-cookie files that Debian ships (`apt-get install fortunes fortunes-min`), so its output is
readable, fortune-like English and nothing more. It writes a standard Hugging Face Llama directory:

    config.json               LlamaForCausalLM, transformers-4 layout (rope_theta, torch_dtype)
    generation_config.json
    model.safetensors         bfloat16 weights, HF tensor names, tied embeddings
    tokenizer.json            byte-level BPE trained here with `tokenizers`
    tokenizer_config.json     bos/eos/pad strings and a role-tagged Jinja2 chat template
    README.md                 what the model is, data and licence, the command that made it, losses

A fifth of the training documents are rendered through the chat template (a short user request
answered by a fortune), so chat requests get a fortune back followed by <|eos|>.

Run `python scripts/train_demo_model.py --help` for the options; the README the script writes
records the exact command used.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import random
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import jinja2
import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "src" / "edgecloud" / "assets" / "demo-llama"
DEFAULT_FORTUNES_DIR = Path("/usr/share/games/fortunes")

# Files from Debian's `fortunes` and `fortunes-min` packages (Debian main, BSD licence; see the
# README this script writes). Left out on purpose: files made mostly of quotations from
# identifiable copyrighted works (pratchett, startrek, zippy, tao, humorists, songs-poems),
# IRC logs of named people (debian, knghtbrd, linux, linuxcookie, perl), and non-prose
# (ascii-art, translate-me).
FORTUNE_FILES = (
    "fortunes",
    "literature",
    "riddles",  # fortunes-min
    "art",
    "computers",
    "cookie",
    "definitions",
    "disclaimer",
    "drugs",
    "education",
    "ethnic",
    "food",
    "goedel",
    "kids",
    "law",
    "love",
    "magic",
    "medicine",
    "men-women",
    "miscellaneous",
    "news",
    "paradoxum",
    "people",
    "pets",
    "platitudes",
    "politics",
    "science",
    "sports",
    "wisdom",
    "work",
)

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
SPECIAL_TOKENS = (BOS, EOS, PAD, *ROLE_TOKENS)

# Each turn is "<|role|>\n" + content + eos, so a generated reply ends with <|eos|> and the engine
# stops there. Plain prompts get <|bos|> from the tokenizer's post-processor; a rendered chat
# already starts with it, so encode rendered chats with add_special_tokens=False.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + eos_token }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)
CHAT_REQUESTS = (
    "Tell me a fortune.",
    "What does my fortune say?",
    "Say something wise.",
    "Tell me something funny.",
    "Give me a quote.",
    "Open a fortune cookie for me.",
)
CHAT_FRACTION = 0.2
MAX_ENTRY_CHARS = 1200


@dataclass(frozen=True)
class ModelShape:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    max_position_embeddings: int


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Train edgecloud's embedded demo model (tiny Llama on Debian fortunes) from scratch.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output model directory")
    parser.add_argument(
        "--fortunes-dir",
        type=Path,
        default=DEFAULT_FORTUNES_DIR,
        help="directory of fortune files (apt-get install fortunes fortunes-min)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for data split, init and batches")
    parser.add_argument(
        "--minutes",
        type=float,
        default=None,
        help="wall-time training budget (25 if neither budget is given)",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="optimizer-step budget; with --minutes too, whichever ends first. "
        "Unlike a time budget, it does not depend on the machine's speed",
    )
    # One thread by default: on a shared, loaded machine two OpenMP threads spent most of their
    # time waiting for each other (measured: 634 vs 4,464 tokens/s for one thread).
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--intermediate-size", type=int, default=768)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument(
        "--context", type=int, default=512, help="max_position_embeddings, also the training window length"
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (cosine to 10%%)")
    parser.add_argument("--warmup-steps", type=int, default=100)
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--eval-every", type=int, default=100, help="steps between validation passes")
    args = parser.parse_args(argv)
    if args.minutes is not None and args.minutes <= 0:
        parser.error(f"--minutes must be > 0, got {args.minutes}")
    if args.steps is not None and args.steps <= 0:
        parser.error(f"--steps must be > 0, got {args.steps}")
    if args.minutes is None and args.steps is None:
        args.minutes = 25.0
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    if args.hidden_size % args.heads:
        parser.error(f"--hidden-size ({args.hidden_size}) must be a multiple of --heads ({args.heads})")
    if args.heads % args.kv_heads:
        parser.error(f"--heads ({args.heads}) must be a multiple of --kv-heads ({args.kv_heads})")
    return args


def read_fortunes(fortunes_dir: Path) -> list[str]:
    """Entries of the chosen fortune files, whitespace-normalised, de-duplicated, in file order."""
    missing = [name for name in FORTUNE_FILES if not (fortunes_dir / name).is_file()]
    if missing:
        raise SystemExit(
            f"fortune files missing from {fortunes_dir}: {', '.join(missing)} "
            "(apt-get install fortunes fortunes-min)"
        )
    entries: dict[str, None] = {}
    for name in FORTUNE_FILES:
        for raw in (fortunes_dir / name).read_text(encoding="utf-8").split("\n%\n"):
            # Fortunes are indented with tabs for layout (attributions, verse); keep the words
            # and line breaks, drop the layout, which a 4k-token vocabulary would waste itself on.
            lines = [" ".join(line.split()) for line in raw.strip("%\n").splitlines()]
            text = "\n".join(line for line in lines if line)
            printable = sum(ch.isascii() and (ch.isprintable() or ch == "\n") for ch in text)
            if text and len(text) <= MAX_ENTRY_CHARS and printable >= 0.98 * len(text):
                entries[text] = None
    return list(entries)


def train_tokenizer(texts: list[str], vocab_size: int) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    bos_id = tokenizer.token_to_id(BOS)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    return tokenizer


def render_chat(request: str, reply: str) -> str:
    template = jinja2.Environment().from_string(CHAT_TEMPLATE)
    messages = [{"role": "user", "content": request}, {"role": "assistant", "content": reply}]
    return template.render(messages=messages, bos_token=BOS, eos_token=EOS, add_generation_prompt=False)


def encode_documents(tokenizer: Tokenizer, texts: list[str], rng: random.Random) -> torch.Tensor:
    """One token stream: each fortune as <|bos|> text <|eos|>, a fifth of them as a chat turn."""
    docs = []
    for text in texts:
        if rng.random() < CHAT_FRACTION:
            docs.append(render_chat(rng.choice(CHAT_REQUESTS), text))
        else:
            docs.append(f"{BOS}{text}{EOS}")
    encodings = tokenizer.encode_batch(docs, add_special_tokens=False)
    return torch.tensor([token for enc in encodings for token in enc.ids], dtype=torch.long)


def hf_config(shape: ModelShape, tokenizer: Tokenizer) -> dict:
    """config.json in the transformers-4 layout that most published Llama checkpoints use."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": shape.vocab_size,
        "hidden_size": shape.hidden_size,
        "intermediate_size": shape.intermediate_size,
        "num_hidden_layers": shape.num_hidden_layers,
        "num_attention_heads": shape.num_attention_heads,
        "num_key_value_heads": shape.num_key_value_heads,
        "head_dim": shape.hidden_size // shape.num_attention_heads,
        "hidden_act": "silu",
        "max_position_embeddings": shape.max_position_embeddings,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "rope_scaling": None,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "initializer_range": 0.02,
        "tie_word_embeddings": True,
        "bos_token_id": tokenizer.token_to_id(BOS),
        "eos_token_id": tokenizer.token_to_id(EOS),
        "pad_token_id": tokenizer.token_to_id(PAD),
        "use_cache": True,
        "torch_dtype": "bfloat16",
    }


def lr_at(progress: float, step: int, args: argparse.Namespace) -> float:
    """Linear warm-up, then cosine from the peak down to 10% of it as the budget runs out."""
    if step < args.warmup_steps:
        return args.lr * (step + 1) / args.warmup_steps
    return args.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * min(progress, 1.0))))


def sample_batch(stream: torch.Tensor, batch_size: int, length: int, gen: torch.Generator) -> torch.Tensor:
    starts = torch.randint(0, len(stream) - length, (batch_size,), generator=gen)
    return torch.stack([stream[s : s + length] for s in starts.tolist()])


@torch.no_grad()
def evaluate(model: torch.nn.Module, windows: torch.Tensor, autocast: bool) -> float:
    model.eval()
    losses = []
    for chunk in windows.split(8):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            losses.append(model(input_ids=chunk, labels=chunk).loss.float().item())
    model.train()
    return sum(losses) / len(losses)


def save_model(out: Path, model: torch.nn.Module, config: dict, tokenizer: Tokenizer) -> None:
    out.mkdir(parents=True, exist_ok=True)
    # named_parameters() yields the tied embedding once, as model.embed_tokens.weight, which is how
    # HF checkpoints with tie_word_embeddings store it (no lm_head.weight).
    tensors = {name: p.detach().to(torch.bfloat16).contiguous() for name, p in model.named_parameters()}
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    generation = {
        "bos_token_id": config["bos_token_id"],
        "eos_token_id": config["eos_token_id"],
        "pad_token_id": config["pad_token_id"],
        "do_sample": True,
        "temperature": 0.8,
        "top_p": 0.95,
    }
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    tokenizer.save(str(out / "tokenizer.json"))
    added = {
        str(tokenizer.token_to_id(tok)): {
            "content": tok,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "single_word": False,
            "special": True,
        }
        for tok in SPECIAL_TOKENS
    }
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": PAD,
        "additional_special_tokens": list(ROLE_TOKENS),
        "model_max_length": config["max_position_embeddings"],
        "clean_up_tokenization_spaces": False,
        "added_tokens_decoder": added,
        "chat_template": CHAT_TEMPLATE,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")


def sample_generations(out: Path, seed: int) -> list[tuple[str, str, str]]:
    """Reload what was written with transformers and generate from it: (mode, prompt, text)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    chat = tok.apply_chat_template(
        [{"role": "user", "content": "Tell me a fortune."}], tokenize=False, add_generation_prompt=True
    )
    cases = [
        ("greedy", "A bird in the hand", False, True),
        ("greedy", "You will", False, True),
        ("sampled", "The secret of life is", True, True),
        ("sampled", "Q: What", True, True),
        ("sampled", chat, True, False),
    ]
    results = []
    torch.manual_seed(seed)
    for mode, prompt, do_sample, add_special in cases:
        ids = tok(prompt, return_tensors="pt", add_special_tokens=add_special).input_ids
        gen_kwargs = {"temperature": 0.8, "top_p": 0.95} if do_sample else {}
        with torch.no_grad():
            output = model.generate(
                ids, max_new_tokens=48, do_sample=do_sample, pad_token_id=tok.pad_token_id, **gen_kwargs
            )
        results.append((mode, prompt, tok.decode(output[0, ids.shape[1] :], skip_special_tokens=True)))
    return results


def write_readme(out: Path, report: dict) -> None:
    samples = "\n\n".join(
        f"*{mode}*, prompt `{json.dumps(prompt)}`:\n\n```text\n{text.strip()}\n```"
        for mode, prompt, text in report["samples"]
    )
    readme = f"""# demo-llama — edgecloud's embedded DEMO model

**This is a demo model, not an assistant.** It is a tiny Llama-architecture causal LM
({report["params"]:,} parameters) trained from scratch for {report["minutes"]:.1f} minutes on
{report["threads"]} CPU thread(s), on fortune-cookie files. It exists so that `make serve` and
`edgecloud generate` work offline with no argument, and so tests have a real, readable model to
run. Its output is fortune-like, often ungrammatical English; it knows nothing and follows no
instructions. Serve any Hugging Face Llama / Qwen2 / Mistral directory instead for real use.

## Data and licence

Text: the fortune files that Debian ships in its `main` archive, packages `fortunes` and
`fortunes-min` (fortune-mod 1.99.1), read from `/usr/share/games/fortunes/`. Debian distributes
them under the BSD licence in `/usr/share/doc/fortunes/copyright` (Copyright (c) 1991 The
Regents of the University of California). The upstream notes say the collection was gathered
from many sources and that attributions were never checked, so no file is marked public domain
entry by entry. We therefore used only these files:

{", ".join(f"`{name}`" for name in FORTUNE_FILES)}

and left out the ones made mostly of quotations from identifiable copyrighted works (`pratchett`,
`startrek`, `zippy`, `tao`, `humorists`, `songs-poems`), IRC logs of named people (`debian`,
`knghtbrd`, `linux`, `linuxcookie`, `perl`) and non-prose (`ascii-art`, `translate-me`).
No text is stored here; only the model trained on it ({report["entries"]:,} entries after
de-duplication, {report["train_tokens"]:,} training tokens, {report["val_tokens"]:,} held-out tokens).

The model files are released with edgecloud under Apache-2.0.

## Format

Standard Hugging Face Llama directory: `config.json` (`LlamaForCausalLM`, transformers-4 layout),
`generation_config.json`, `model.safetensors` (bfloat16, tied input/output embeddings),
`tokenizer.json` (byte-level BPE, {report["vocab_size"]} tokens, trained with `tokenizers`),
`tokenizer_config.json` (bos `<|bos|>`, eos `<|eos|>`, pad `<|pad|>`, role tokens
`<|system|>`, `<|user|>`, `<|assistant|>`, and the chat template below).

Chat template (each turn is `<|role|>` newline content `<|eos|>`):

```jinja
{CHAT_TEMPLATE}
```

The tokenizer adds `<|bos|>` to plain prompts; a rendered chat already starts with it, so encode
it with `add_special_tokens=False`. A fifth of the training documents were chat turns (a short
request such as "Tell me a fortune." answered by a fortune), so chat requests get a fortune back.

| shape | value |
|---|---|
| hidden size | {report["shape"]["hidden_size"]} |
| layers | {report["shape"]["num_hidden_layers"]} |
| attention heads | {report["shape"]["num_attention_heads"]} |
| KV heads | {report["shape"]["num_key_value_heads"]} |
| MLP size | {report["shape"]["intermediate_size"]} |
| vocabulary | {report["vocab_size"]} |
| context (max_position_embeddings) | {report["shape"]["max_position_embeddings"]} |
| parameters | {report["params"]:,} |

## Training

Command (from the repository root, in the project's virtual environment: `make venv`, then
`. .venv/bin/activate`; the text comes from `apt-get install fortunes fortunes-min fortune-mod`):

```sh
{report["command"]}
```

AdamW (betas 0.9/0.95, weight decay {report["weight_decay"]}), peak learning rate {report["lr"]},
{report["warmup_steps"]} warm-up steps then cosine to 10%, batches of {report["batch_size"]} random
windows of {report["shape"]["max_position_embeddings"]} tokens, bfloat16 autocast on CPU,
torch threads: {report["threads"]}, seed {report["seed"]}. Validation loss is measured every
{report["eval_every"]} steps on held-out fortunes; the weights with the lowest validation loss
are kept. A time budget makes the number of steps depend on the machine's speed and load; pass
`--steps N` instead to fix it.

| result | value |
|---|---|
| optimizer steps | {report["steps"]:,} |
| tokens seen | {report["tokens_seen"]:,} ({report["epochs"]:.1f} passes over the training tokens) |
| wall time | {report["minutes"]:.1f} min ({report["tok_s"]:,.0f} tokens/s) |
| final training loss (mean of last 50 steps) | {report["final_train_loss"]:.3f} |
| best validation loss (step {report["best_step"]:,}) | {report["best_val_loss"]:.3f} |
| best validation perplexity | {math.exp(report["best_val_loss"]):.1f} |
| validation loss of the saved bfloat16 weights | {report["saved_val_loss"]:.3f} |

Machine: {report["machine"]}.

## Sample generations (transformers `generate`, float32, at most 48 new tokens; sampled with
temperature 0.8, top-p 0.95)

{samples}
"""
    (out / "README.md").write_text(readme)


def machine_description() -> str:
    cpu = "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{cpu}, shared with other jobs (timings are noisy), torch {torch.__version__}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)

    from transformers import LlamaConfig, LlamaForCausalLM

    entries = read_fortunes(args.fortunes_dir)
    rng.shuffle(entries)
    n_val = max(1, len(entries) // 50)
    val_entries, train_entries = entries[:n_val], entries[n_val:]
    console.print(f"{len(entries):,} fortunes: {len(train_entries):,} train, {n_val:,} held out")

    tokenizer = train_tokenizer(train_entries, args.vocab_size)
    train_stream = encode_documents(tokenizer, train_entries, rng)
    val_stream = encode_documents(tokenizer, val_entries, rng)
    window = args.context
    val_windows = val_stream[: len(val_stream) // window * window].view(-1, window)
    chars_per_token = sum(map(len, train_entries)) / len(train_stream)
    console.print(
        f"tokenizer: {tokenizer.get_vocab_size()} tokens, {chars_per_token:.2f} chars/token; "
        f"{len(train_stream):,} train tokens, {len(val_stream):,} held-out tokens"
    )

    shape = ModelShape(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=args.hidden_size,
        intermediate_size=args.intermediate_size,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        max_position_embeddings=args.context,
    )
    config = hf_config(shape, tokenizer)
    model = LlamaForCausalLM(LlamaConfig(**config))
    model.train()
    params = sum(p.numel() for p in model.parameters())
    console.print(f"model: {params:,} parameters, {params * 2 / 1e6:.1f} MB in bfloat16")

    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.95),
    )
    gen = torch.Generator().manual_seed(args.seed)
    budget_s = args.minutes * 60 if args.minutes is not None else math.inf

    best_val, best_step, best_state = math.inf, 0, copy.deepcopy(model.state_dict())
    recent: list[float] = []
    step = 0
    start = time.perf_counter()
    columns = (
        TextColumn("[bold]training"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
    )
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("train", total=1.0, status="")
        while True:
            elapsed = time.perf_counter() - start
            fraction = max(elapsed / budget_s, step / args.steps if args.steps else 0.0)
            if fraction >= 1.0:
                break
            for group in optimizer.param_groups:
                group["lr"] = lr_at(fraction, step, args)
            batch = sample_batch(train_stream, args.batch_size, window, gen)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = model(input_ids=batch, labels=batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            recent = [*recent[-49:], loss.item()]
            if step % args.eval_every == 0:
                val = evaluate(model, val_windows, True)
                if val < best_val:
                    best_val, best_step, best_state = val, step, copy.deepcopy(model.state_dict())
                console.log(f"step {step}: train {sum(recent) / len(recent):.3f}, held-out {val:.3f}")
            tok_s = step * args.batch_size * window / max(elapsed, 1e-9)
            progress.update(
                task,
                completed=min(fraction, 1.0),
                status=f"step {step} loss {loss.item():.3f} {tok_s:,.0f} tok/s",
            )
    elapsed = time.perf_counter() - start
    val = evaluate(model, val_windows, True)
    if val < best_val:
        best_val, best_step, best_state = val, step, copy.deepcopy(model.state_dict())
    console.print(
        f"done: {step} steps in {elapsed / 60:.1f} min; best held-out loss {best_val:.3f} at step {best_step}"
    )

    model.load_state_dict(best_state)
    save_model(args.out, model, config, tokenizer)
    saved = LlamaForCausalLM(LlamaConfig(**config))
    saved.load_state_dict({k: v.float() for k, v in model.to(torch.bfloat16).state_dict().items()})
    saved_val = evaluate(saved, val_windows, False)
    samples = sample_generations(args.out, args.seed)
    for mode, prompt, text in samples:
        console.print(f"[bold]{mode}[/bold] {prompt!r} -> {text!r}")

    command = ["python", "scripts/train_demo_model.py", *(sys.argv[1:] if argv is None else argv)]
    tokens_seen = step * args.batch_size * window
    write_readme(
        args.out,
        {
            "params": params,
            "minutes": elapsed / 60,
            "entries": len(entries),
            "train_tokens": len(train_stream),
            "val_tokens": len(val_stream),
            "vocab_size": shape.vocab_size,
            "shape": config,
            "command": shlex.join(command),
            "weight_decay": args.weight_decay,
            "lr": args.lr,
            "warmup_steps": args.warmup_steps,
            "batch_size": args.batch_size,
            "threads": args.threads,
            "seed": args.seed,
            "eval_every": args.eval_every,
            "steps": step,
            "tokens_seen": tokens_seen,
            "epochs": tokens_seen / len(train_stream),
            "tok_s": tokens_seen / elapsed,
            "final_train_loss": sum(recent) / len(recent),
            "best_step": best_step,
            "best_val_loss": best_val,
            "saved_val_loss": saved_val,
            "machine": machine_description(),
            "samples": samples,
        },
    )
    size = sum(f.stat().st_size for f in args.out.iterdir())
    console.print(f"wrote {args.out} ({size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
