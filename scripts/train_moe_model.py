"""Train edgecloud's small mixture-of-experts model (Mixtral layout, 16 experts, top-2) on CPU.

Expert placement has something to do only when routing is skewed, and random weights route almost
uniformly. This script trains a real MoE from scratch on two kinds of text that ship offline, so that
its routing is what training made it, and so that it shifts with the workload:

* prose: the fortune files Debian ships (packages ``fortunes`` and ``fortunes-min``, BSD licence,
  ``/usr/share/doc/fortunes/copyright``), the same file list as the demo model;
* code: the Python 3.11 standard library's own source (``/usr/lib/python3.11``, PSF License
  Version 2, ``/usr/share/doc/python3.11/copyright``), without its test suites, idlelib and lib2to3.

It trains transformers' own ``MixtralForCausalLM`` with its load-balancing loss at transformers'
default coefficient (``router_aux_loss_coef`` 0.001, not tuned), and writes a standard Hugging Face
Mixtral directory (per-expert tensors on disk, bfloat16) with a byte-level BPE tokenizer, plus
``heldout.json`` (held-out prose entries and code files, by name, for the routing benchmarks) and a
README with the data, licences, the exact command, losses and the routing skew per workload.

Run ``python scripts/train_moe_model.py --help`` for the options.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shlex
import sys
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "src" / "edgecloud" / "assets" / "moe-mixtral"
FORTUNES_DIR = Path("/usr/share/games/fortunes")
STDLIB_DIR = Path("/usr/lib/python3.11")

# As scripts/train_demo_model.py: Debian's fortune files minus quotations of identifiable
# copyrighted works, IRC logs of named people and non-prose.
FORTUNE_FILES = (
    "fortunes", "literature", "riddles", "art", "computers", "cookie", "definitions", "disclaimer", "drugs",
    "education", "ethnic", "food", "goedel", "kids", "law", "love", "magic", "medicine", "men-women",
    "miscellaneous", "news", "paradoxum", "people", "pets", "platitudes", "politics", "science", "sports",
    "wisdom", "work",
)
STDLIB_SKIP = ("test", "tests", "idlelib", "lib2to3", "site-packages", "dist-packages", "config-3.11-x86_64-linux-gnu",
               "__pycache__")
BOS, EOS = "<|bos|>", "<|eos|>"
HELDOUT_FRACTION = 0.05


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output model directory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--minutes", type=float, default=60.0, help="wall-time training budget")
    parser.add_argument("--steps", type=int, default=None, help="optimizer-step budget (whichever ends first)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--expert-size", type=int, default=128, help="each expert's intermediate size")
    parser.add_argument("--experts", type=int, default=16)
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--context", type=int, default=256, help="training window (max_position_embeddings 512)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (cosine to 10%%)")
    parser.add_argument("--warmup-steps", type=int, default=100)
    parser.add_argument("--aux-loss-coef", type=float, default=0.001, help="transformers' Mixtral default")
    parser.add_argument("--eval-every", type=int, default=200)
    args = parser.parse_args(argv)
    for name in ("minutes", "threads", "experts", "top_k", "layers", "batch_size", "context"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    if args.top_k > args.experts:
        parser.error(f"--top-k ({args.top_k}) must be <= --experts ({args.experts})")
    return args


def read_prose() -> list[str]:
    missing = [name for name in FORTUNE_FILES if not (FORTUNES_DIR / name).is_file()]
    if missing:
        raise SystemExit(f"fortune files missing from {FORTUNES_DIR}: {missing} "
                         "(apt-get install fortunes fortunes-min)")
    entries: dict[str, None] = {}
    for name in FORTUNE_FILES:
        for raw in (FORTUNES_DIR / name).read_text(encoding="utf-8").split("\n%\n"):
            lines = [" ".join(line.split()) for line in raw.strip("%\n").splitlines()]
            text = "\n".join(line for line in lines if line)
            if text and sum(ch.isascii() for ch in text) >= 0.98 * len(text):
                entries[text] = None
    return list(entries)


def code_files() -> list[Path]:
    if not STDLIB_DIR.is_dir():
        raise SystemExit(f"{STDLIB_DIR} is missing: the code corpus is Python 3.11's standard library")
    return sorted(p for p in STDLIB_DIR.rglob("*.py")
                  if not any(part in STDLIB_SKIP for part in p.relative_to(STDLIB_DIR).parts))


def split(items: list, rng: random.Random) -> tuple[list, list]:
    order = items[:]
    rng.shuffle(order)
    cut = max(1, int(len(order) * HELDOUT_FRACTION))
    return order[cut:], order[:cut]


def train_tokenizer(texts: list[str], vocab_size: int, out: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[BOS, EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, 0)])
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": BOS, "eos_token": EOS, "add_bos_token": True, "tokenizer_class": "PreTrainedTokenizerFast",
    }, indent=2) + "\n")
    return tok


def token_stream(tok, texts: list[str]) -> torch.Tensor:
    ids: list[int] = []
    for encoding in tok.encode_batch(texts):
        ids.extend(encoding.ids)
        ids.append(1)  # <|eos|> between documents
    return torch.tensor(ids, dtype=torch.int64)


def batch(streams: list[torch.Tensor], size: int, context: int, rng: random.Random) -> torch.Tensor:
    """Half prose windows, half code windows (``streams`` = [prose, code])."""
    rows = []
    for i in range(size):
        stream = streams[i % len(streams)]
        start = rng.randrange(0, len(stream) - context)
        rows.append(stream[start : start + context])
    return torch.stack(rows)


@torch.no_grad()
def evaluate(model, streams: list[torch.Tensor], context: int, windows: int = 16) -> dict[str, float]:
    """Held-out loss per workload and the share of top-k choices each expert gets, per layer."""
    model.eval()
    result: dict[str, float] = {}
    for name, stream in zip(("prose", "code"), streams, strict=True):
        step = max(1, (len(stream) - context) // windows)
        x = torch.stack([stream[i * step : i * step + context] for i in range(windows)])
        out = model(input_ids=x, labels=x, output_router_logits=True)  # transformers shifts the labels
        result[f"{name}_loss"] = float(out.loss - model.config.router_aux_loss_coef * out.aux_loss)
    model.train()
    return result


def routing_shares(model, stream: torch.Tensor, context: int, windows: int = 16) -> list[list[float]]:
    """Per layer, each expert's share of the top-k choices on ``stream``'s held-out windows."""
    step = max(1, (len(stream) - context) // windows)
    x = torch.stack([stream[i * step : i * step + context] for i in range(windows)])
    with torch.no_grad():
        out = model(input_ids=x, output_router_logits=True)
    shares = []
    k = model.config.num_experts_per_tok
    for logits in out.router_logits:
        chosen = logits.float().softmax(-1).topk(k, dim=-1).indices.flatten()
        counts = torch.bincount(chosen, minlength=model.config.num_local_experts).float()
        shares.append((counts / counts.sum()).tolist())
    return shares


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from transformers import MixtralConfig, MixtralForCausalLM

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    prose_train, prose_held = split(read_prose(), rng)
    files = code_files()
    code_train_files, code_held_files = split(files, rng)
    code_train = [p.read_text(encoding="utf-8", errors="replace") for p in code_train_files]
    code_held = [p.read_text(encoding="utf-8", errors="replace") for p in code_held_files]
    out_dir: Path = args.out
    tok = train_tokenizer(prose_train + code_train, args.vocab_size, out_dir)
    train_streams = [token_stream(tok, prose_train), token_stream(tok, code_train)]
    held_streams = [token_stream(tok, prose_held), token_stream(tok, code_held)]
    print(f"prose: {len(prose_train)} entries, {len(train_streams[0])} tokens; "
          f"code: {len(code_train)} files, {len(train_streams[1])} tokens", flush=True)

    config = MixtralConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=args.hidden_size, intermediate_size=args.expert_size,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
        num_local_experts=args.experts, num_experts_per_tok=args.top_k, max_position_embeddings=512,
        rope_theta=10000.0, tie_word_embeddings=True, router_aux_loss_coef=args.aux_loss_coef,
        output_router_logits=True, bos_token_id=0, eos_token_id=1, rms_norm_eps=1e-5,
    )
    model = MixtralForCausalLM(config)
    model.train()
    params = sum(p.numel() for p in model.parameters())
    print(f"{params:,} parameters", flush=True)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95))
    budget_s = args.minutes * 60
    expected_steps = args.steps or 10**9
    start = time.monotonic()
    history: list[dict[str, float]] = []
    step = 0
    tokens = 0
    while True:
        elapsed = time.monotonic() - start
        if elapsed >= budget_s or (args.steps is not None and step >= args.steps):
            break
        # Cosine over the time budget (or the step budget): the schedule ends when training does.
        progress = min(1.0, max(elapsed / budget_s, step / expected_steps))
        warm = min(1.0, (step + 1) / args.warmup_steps)
        lr = args.lr * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
        for group in opt.param_groups:
            group["lr"] = lr
        x = batch(train_streams, args.batch_size, args.context, rng)
        out = model(input_ids=x, labels=x)  # transformers shifts the labels
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        tokens += x.numel()
        if step % args.eval_every == 0:
            record = {"step": step, "minutes": (time.monotonic() - start) / 60, "train_loss": float(out.loss.detach()),
                      **evaluate(model, held_streams, args.context)}
            history.append(record)
            print(json.dumps(record), f"{tokens / (time.monotonic() - start):.0f} tok/s", flush=True)
    minutes = (time.monotonic() - start) / 60
    model.eval()
    final = {"step": step, "minutes": minutes, **evaluate(model, held_streams, args.context)}
    shares = {name: routing_shares(model, s, args.context) for name, s in zip(("prose", "code"), held_streams,
                                                                              strict=True)}
    model.config.output_router_logits = False
    model.to(torch.bfloat16).save_pretrained(out_dir)
    (out_dir / "generation_config.json").unlink(missing_ok=True)
    (out_dir / "heldout.json").write_text(json.dumps({
        "prose": prose_held, "code_files": [str(p.relative_to(STDLIB_DIR)) for p in code_held_files],
    }, indent=1) + "\n")
    write_readme(out_dir, args, params, step, tokens, minutes, final, history, shares,
                 (len(prose_train), len(prose_held), len(code_train), len(code_held), len(train_streams[0]),
                  len(train_streams[1])))
    print(json.dumps(final), flush=True)


def write_readme(out: Path, args: argparse.Namespace, params: int, steps: int, tokens: int, minutes: float,
                 final: dict[str, float], history: list[dict[str, float]], shares: dict[str, list[list[float]]],
                 sizes: tuple[int, ...]) -> None:
    prose_n, prose_h, code_n, code_h, prose_tok, code_tok = sizes
    command = "nice -n 19 .venv/bin/python scripts/train_moe_model.py " + shlex.join(sys.argv[1:])
    lines = [
        "# moe-mixtral — edgecloud's small trained mixture-of-experts model",
        "",
        f"A Mixtral-layout causal LM ({params:,} parameters; {args.experts} experts of intermediate size "
        f"{args.expert_size}, top-{args.top_k}, in each of {args.layers} layers) trained from scratch on CPU for "
        f"{minutes:.1f} minutes ({steps} steps, {tokens:,} tokens) by `scripts/train_moe_model.py`. It exists so "
        "that expert placement (docs/moe.md) has real, trained routing to balance: which experts a token "
        "visits depends on what the text is. It is not an assistant; its text is fortune-like prose or "
        "Python-like code.",
        "",
        "## Data and licence",
        "",
        f"* prose: the fortune files Debian ships (`fortunes`, `fortunes-min`; BSD licence, "
        f"`/usr/share/doc/fortunes/copyright`): {', '.join(f'`{n}`' for n in FORTUNE_FILES)}. "
        f"{prose_n:,} entries for training ({prose_tok:,} tokens), {prose_h:,} held out.",
        f"* code: the Python 3.11 standard library's source as Debian installs it in `/usr/lib/python3.11` "
        f"(PSF License Version 2, `/usr/share/doc/python3.11/copyright`), without `test`, `tests`, `idlelib` and "
        f"`lib2to3`: {code_n:,} files for training ({code_tok:,} tokens), {code_h:,} held out.",
        "",
        "`heldout.json` names the held-out entries and files (the benchmarks' prompts come from them). No "
        "training text is stored here. The model files are released with edgecloud under Apache-2.0.",
        "",
        "## Training",
        "",
        f"```\n{command}\n```",
        "",
        f"transformers' `MixtralForCausalLM`, AdamW (β 0.9/0.95, weight decay 0.1), peak learning rate {args.lr} "
        f"with {args.warmup_steps} warm-up steps and a cosine to 10% over the budget, batches of "
        f"{args.batch_size} windows of {args.context} tokens (half prose, half code), gradient clipping 1.0, "
        f"load-balancing loss coefficient {args.aux_loss_coef} (transformers' default, not tuned), "
        f"{args.threads} thread(s), seed {args.seed}. Saved in bfloat16 (per-expert tensors on disk, as "
        "transformers writes them).",
        "",
        f"Held-out loss at the end: prose {final['prose_loss']:.3f}, code {final['code_loss']:.3f} (nats/token).",
        "",
        "| step | minutes | train loss | prose loss | code loss |",
        "| ---: | ---: | ---: | ---: | ---: |",
        *(f"| {h['step']} | {h['minutes']:.1f} | {h['train_loss']:.3f} | {h['prose_loss']:.3f} | "
          f"{h['code_loss']:.3f} |" for h in history),
        "",
        "## Routing on held-out text",
        "",
        "Share of the top-k choices each expert gets (max / mean over experts; 1.0 would be uniform):",
        "",
        "| layer | prose max/mean | code max/mean | hottest expert, prose | hottest expert, code |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for layer, (p, c) in enumerate(zip(shares["prose"], shares["code"], strict=True)):
        mean = 1.0 / len(p)
        lines.append(f"| {layer} | {max(p) / mean:.2f} | {max(c) / mean:.2f} | {p.index(max(p))} | "
                     f"{c.index(max(c))} |")
    (out / "README.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
