"""Client request sizes on the wire for an ``edgecloud edge bench`` JSON written before the bench
counted them (#23): each request rebuilt with httpx as the bench sent it — the same headers (the
session id it sent and the version it carried, from the turn before), a body of the recorded length
— and counted with :func:`edgecloud.edge.bench.http1_request_bytes`. The access port is taken to
have five digits (the bench's ports are ephemeral, 32768-60999). On a JSON that has
``request_wire_bytes`` it also checks the rebuilt sizes against the measured ones.

    python scripts/edge_request_wire.py docs/data/edge_bench_smollm2_trace_client.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import httpx

from edgecloud.edge.bench import http1_request_bytes, ratio_ci

SESSION, VERSION = "X-Session-Id", "X-Session-Version"


def rebuilt_sizes(mode: str, records: list[dict[str, Any]]) -> dict[tuple[str, int], int]:
    answered = {(r["conversation"], r["turn"]): r for r in records if r["status"] == 200}
    sizes = {}
    with httpx.Client() as client:
        for (conversation, k), r in answered.items():
            headers: dict[str, str] = {}
            if mode != "client":
                before = answered.get((conversation, k - 1))
                headers[SESSION] = before["session"] if before else "new"
                if before:
                    headers[VERSION] = before["version"]
            body_len = r["request_bytes"] - sum(len(n) + len(v) + 4 for n, v in headers.items())
            request = client.build_request("POST", "http://127.0.0.1:40000/v1/chat/completions",
                                           content=b"x" * body_len,
                                           headers={"Content-Type": "application/json", **headers})
            sizes[(conversation, k)] = http1_request_bytes(request)
            if "request_wire_bytes" in r and r["request_wire_bytes"] != sizes[(conversation, k)]:
                raise SystemExit(f"{mode} {conversation} turn {k}: rebuilt {sizes[(conversation, k)]} B, "
                                 f"measured {r['request_wire_bytes']} B")
    return sizes


def main(path: str) -> None:
    report = json.loads(Path(path).read_text())
    for case in report["cases"]:
        modes = case["modes"]
        if "tokens" not in modes or "client" not in modes:
            continue
        tokens, client = (rebuilt_sizes(m, modes[m]["records"]) for m in ("tokens", "client"))
        common = sorted(set(tokens) & set(client))
        later = [c for c in common if c[1] > 0]
        payload = {m: {(r["conversation"], r["turn"]): r["request_bytes"] for r in modes[m]["records"]
                       if r["status"] == 200} for m in ("tokens", "client")}
        out = {
            "workload": case["workload"], "turns": len(common),
            "wire_p50": {"tokens": _median([tokens[c] for c in common]),
                         "client": _median([client[c] for c in common])},
            "wire_tokens_over_client": ratio_ci([tokens[c] for c in common], [client[c] for c in common]),
            "wire_later_turns_tokens_over_client": ratio_ci([tokens[c] for c in later], [client[c] for c in later]),
            "payload_tokens_over_client": ratio_ci([payload["tokens"][c] for c in common],
                                                   [payload["client"][c] for c in common]),
            "http_overhead_p50": _median([tokens[c] - payload["tokens"][c] for c in common]),
        }
        print(json.dumps(out, indent=1))


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    n = len(ordered)
    return ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2


if __name__ == "__main__":
    main(sys.argv[1])
