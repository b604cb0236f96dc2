"""Readers for public LLM request traces: Azure LLM inference 2023 (CSV) and Mooncake (JSONL).

A trace gives, per request, when it arrived and how many tokens went in and came out; Mooncake
traces also give ``hash_ids``, the remapped hashes of the prompt's 512-token prefix blocks, so
that requests sharing a prefix can be rebuilt with a real shared prefix (``workload.py``).
The files are read from wherever the user keeps them; nothing here knows a fixed path.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

# The Mooncake release hashes prompts in blocks of this many tokens.
MOONCAKE_BLOCK_TOKENS = 512


class TraceFormatError(ValueError):
    """A trace file that does not follow its format; the message names the file, line and field."""


@dataclass(frozen=True)
class TraceRequest:
    """One request of a trace, times relative to the trace's first request."""

    arrival_s: float
    input_len: int
    output_len: int
    hash_ids: tuple[int, ...] = ()


def _count(value: object, field: str, where: str) -> int:
    try:
        count = int(str(value).strip())
    except ValueError:
        raise TraceFormatError(f"{where}: {field} must be an integer >= 0, got {value!r}") from None
    if count < 0:
        raise TraceFormatError(f"{where}: {field} must be an integer >= 0, got {count}")
    return count


def _azure_timestamp(text: str, where: str) -> float:
    """Seconds since the epoch of ``2023-11-16 18:15:46.6805900`` (seven fractional digits,
    one more than ``datetime`` parses, so the fraction is read separately)."""
    whole, _, fraction = text.strip().partition(".")
    try:
        seconds = datetime.fromisoformat(whole).timestamp()
        return seconds + (float(f"0.{fraction}") if fraction else 0.0)
    except ValueError:
        raise TraceFormatError(
            f"{where}: TIMESTAMP must look like '2023-11-16 18:15:46.6805900', got {text!r}"
        ) from None


def read_azure_csv(path: str | Path, limit: int | None = None) -> list[TraceRequest]:
    """Read an Azure LLM inference 2023 trace (``TIMESTAMP,ContextTokens,GeneratedTokens``)."""
    path = Path(path)
    requests: list[TraceRequest] = []
    with path.open(newline="") as file:
        reader = csv.DictReader(file)
        expected = {"TIMESTAMP", "ContextTokens", "GeneratedTokens"}
        if reader.fieldnames is None or not expected <= set(reader.fieldnames):
            raise TraceFormatError(
                f"{path}: header must contain {sorted(expected)}, got {reader.fieldnames}"
            )
        start: float | None = None
        for row in reader:
            if limit is not None and len(requests) >= limit:
                break
            where = f"{path} line {reader.line_num}"
            stamp = _azure_timestamp(row["TIMESTAMP"], where)
            start = stamp if start is None else start
            requests.append(
                TraceRequest(
                    arrival_s=stamp - start,
                    input_len=_count(row["ContextTokens"], "ContextTokens", where),
                    output_len=_count(row["GeneratedTokens"], "GeneratedTokens", where),
                )
            )
    return requests


def read_mooncake_jsonl(path: str | Path, limit: int | None = None) -> list[TraceRequest]:
    """Read a Mooncake trace: one ``{"timestamp" (ms), "input_length", "output_length",
    "hash_ids"}`` object a line."""
    path = Path(path)
    requests: list[TraceRequest] = []
    with path.open() as file:
        for line_number, line in enumerate(file, start=1):
            if limit is not None and len(requests) >= limit:
                break
            if not line.strip():
                continue
            where = f"{path} line {line_number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise TraceFormatError(f"{where}: not a JSON object ({error.msg})") from None
            if not isinstance(record, dict):
                raise TraceFormatError(f"{where}: expected a JSON object, got {type(record).__name__}")
            missing = {"timestamp", "input_length", "output_length"} - record.keys()
            if missing:
                raise TraceFormatError(f"{where}: missing field(s) {sorted(missing)}")
            timestamp = record["timestamp"]
            if not isinstance(timestamp, int | float) or timestamp < 0:
                raise TraceFormatError(f"{where}: timestamp must be a number of ms >= 0, got {timestamp!r}")
            hash_ids = record.get("hash_ids", [])
            if not isinstance(hash_ids, list) or not all(isinstance(h, int) for h in hash_ids):
                raise TraceFormatError(f"{where}: hash_ids must be a list of integers")
            requests.append(
                TraceRequest(
                    arrival_s=timestamp / 1000.0,
                    input_len=_count(record["input_length"], "input_length", where),
                    output_len=_count(record["output_length"], "output_length", where),
                    hash_ids=tuple(hash_ids),
                )
            )
    if requests:
        start = min(request.arrival_s for request in requests)
        requests = [
            TraceRequest(r.arrival_s - start, r.input_len, r.output_len, r.hash_ids) for r in requests
        ]
    return requests


def read_trace(path: str | Path, limit: int | None = None) -> list[TraceRequest]:
    """Read a trace, choosing the reader by file extension (``.csv`` Azure, ``.jsonl`` Mooncake)."""
    suffix = Path(path).suffix.lower()
    if suffix == ".csv":
        return read_azure_csv(path, limit)
    if suffix in (".jsonl", ".json"):
        return read_mooncake_jsonl(path, limit)
    raise TraceFormatError(
        f"{path}: trace format is chosen by extension: .csv (Azure LLM 2023) or .jsonl (Mooncake), "
        f"got {suffix!r}"
    )


def ideal_prefix_hit_rate(requests: list[TraceRequest], block_tokens: int = MOONCAKE_BLOCK_TOKENS) -> float:
    """Fraction of prompt tokens an unbounded prefix cache would reuse when the requests arrive
    in order: a hash block hits if an earlier request had the same chain of blocks up to it, and
    counts ``block_tokens`` tokens (at most the prompt's length). The bound a server's measured
    prefix-cache hit rate on the replay can approach (requests computed at the same time may
    both miss)."""
    seen: set[tuple[int, ...]] = set()
    hits = total = 0
    for request in requests:
        chain = request.hash_ids
        reused = 0
        while reused < len(chain) and chain[: reused + 1] in seen:
            reused += 1
        hits += min(reused * block_tokens, request.input_len)
        total += request.input_len
        seen.update(chain[: i + 1] for i in range(len(chain)))
    return hits / total if total else 0.0
