"""Record long routing traces of the trained MoE for the predictive-placement study (issue #20, docs/moe.md).

``bench moe``'s traces hold three waves of eight prompts per phase: too few to say how well a
placement computed from past waves fits the next ones, or how that improves with more past waves.
This records two longer traces from held-out text that neither ``bench moe --prompt-set eval`` nor
``--prompt-set tune`` uses (with their default 24 prompts: prose entries 0-95, the code files'
first 800 characters):

* ``long-tune``: prose entries 96-287 and code chunks 2, 4, 6, ... (400 characters each, from 800 on)
  of the held-out standard-library files, the files taking turns; settings are chosen on it;
* ``long-eval``: prose entries 288-479 and code chunks 3, 5, 7, ...; only reported.

Each trace: ``history`` (64 prose prompts), ``prose`` (64 more) and ``code`` (128), served as
``bench moe`` serves (8 at a time, 32 greedy tokens each), so a wave is again one prefill step and
31 decode steps.

    nice -n 19 .venv/bin/python scripts/moe_record_long_traces.py --out-dir /tmp/traces
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from edgecloud.llm.moe.bench import ASSET, STDLIB_DIR, record_traces

CHUNK = 400


def long_prompts(model_dir: Path, part: str, history: int = 64, prose: int = 64,
                 code: int = 128) -> dict[str, list[str]]:
    held = json.loads((model_dir / "heldout.json").read_text())
    entries = [p for p in held["prose"] if len(p) >= 40]
    start = 96 if part == "tune" else 96 + history + prose
    texts = entries[start : start + history + prose]
    parity = 0 if part == "tune" else 1
    per_file = []
    for name in held["code_files"]:
        path = STDLIB_DIR / name
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        chunks = [text[i : i + CHUNK] for i in range(2 * CHUNK, len(text), CHUNK)]
        per_file.append([c for j, c in enumerate(chunks) if j % 2 == parity and len(c) >= 40])
    chunks: list[str] = []
    for round_ in range(max(len(f) for f in per_file)):  # the files take turns
        chunks.extend(f[round_] for f in per_file if round_ < len(f))
    if len(texts) < history + prose or len(chunks) < code:
        raise ValueError(f"not enough held-out text: {len(texts)} prose, {len(chunks)} code chunks")
    return {"history": texts[:history], "prose": texts[history:], "code": chunks[:code]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=ASSET)
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--parts", default="tune,eval")
    args = parser.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for part in args.parts.split(","):
        traces = record_traces(args.model, long_prompts(args.model, part), max_tokens=32, max_num_seqs=8, threads=1)
        out = args.out_dir / f"moe_long_{part}_trace.json"
        out.write_text(json.dumps({name: t.to_dict() for name, t in traces.items()}) + "\n")
        print(out, {name: t.counts.shape for name, t in traces.items()}, flush=True)


if __name__ == "__main__":
    main()
