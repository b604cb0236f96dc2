"""Scores of an edge answer: how likely it is correct, from what the edge agent returns.

The router asks the edge agent for its answer with ``logprobs``; a score is computed from the
answer's token log-probabilities and whether its tool calls are schema-valid. Which score
separates correct from wrong answers best is measured (AUROC on calibration data, docs/netgpt.md);
``SCORES`` names the candidates.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from jsonschema import Draft202012Validator


@dataclass(frozen=True)
class EdgeAnswer:
    """What the router reads from the edge's chat completion."""

    logprobs: list[float]
    tool_calls: list[dict[str, Any]]
    valid: bool  # at least one call, each of an offered function with schema-valid arguments


def schema_valid(tool_calls: list[dict[str, Any]], tools: list[dict[str, Any]]) -> bool:
    """Every call names an offered function and its arguments (JSON text) validate against that
    function's parameter schema; no call at all is not valid."""
    schemas = {t["function"]["name"]: t["function"].get("parameters", {}) for t in tools}
    if not tool_calls:
        return False
    for call in tool_calls:
        function = call.get("function", {})
        schema = schemas.get(function.get("name"))
        if schema is None:
            return False
        try:
            arguments = json.loads(function.get("arguments", ""))
        except (json.JSONDecodeError, TypeError):
            return False
        if not isinstance(arguments, dict) or any(True for _ in Draft202012Validator(schema).iter_errors(arguments)):
            return False
    return True


def read_answer(response: dict[str, Any], tools: list[dict[str, Any]]) -> EdgeAnswer:
    """The edge's chat completion (``logprobs: true``) as an ``EdgeAnswer``."""
    choice = response["choices"][0]
    entries = ((choice.get("logprobs") or {}).get("content")) or []
    calls = choice["message"].get("tool_calls") or []
    return EdgeAnswer([float(e["logprob"]) for e in entries], calls, schema_valid(calls, tools))


def _mean(a: EdgeAnswer) -> float:
    return math.exp(sum(a.logprobs) / len(a.logprobs)) if a.logprobs else 0.0


def _min(a: EdgeAnswer) -> float:
    return math.exp(min(a.logprobs)) if a.logprobs else 0.0


def _sequence(a: EdgeAnswer) -> float:
    return math.exp(sum(a.logprobs)) if a.logprobs else 0.0


SCORES: dict[str, Callable[[EdgeAnswer], float]] = {
    "mean_prob": _mean,  # geometric-mean token probability
    "min_prob": _min,  # the least likely token's probability
    "sequence_prob": _sequence,  # the whole answer's probability
    "valid": lambda a: float(a.valid),  # schema validity alone
    "valid_mean_prob": lambda a: float(a.valid) * _mean(a),  # validity gates the mean probability
    "valid_min_prob": lambda a: float(a.valid) * _min(a),
}


def auroc(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """Area under the ROC curve: the probability that a correct answer scores above a wrong one
    (ties count half); 0.5 when one class is missing."""
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    if not pos or not neg:
        return 0.5
    ranked = sorted((s, y) for s, y in zip(scores, labels, strict=True))
    rank_sum, i = 0.0, 0
    while i < len(ranked):
        j = i
        while j < len(ranked) and ranked[j][0] == ranked[i][0]:
            j += 1
        average_rank = (i + j + 1) / 2  # ranks are 1-based
        rank_sum += average_rank * sum(1 for k in range(i, j) if ranked[k][1])
        i = j
    return (rank_sum - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg))
