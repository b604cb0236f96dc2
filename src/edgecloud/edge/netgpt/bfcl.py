"""BFCL (the Berkeley Function-Calling Leaderboard) as NetGPT's workload: questions, functions and
ground truth from the ``bfcl-eval`` package (Apache-2.0; ``pip install --no-deps bfcl-eval``),
split by function, turned into OpenAI tool requests, and scored by BFCL's own AST checker.

**Split by function.** Every function name goes to the test side with probability
``test_fraction`` by a hash of the name (stable across runs and machines); a question is a test
question when all its functions are test functions, a train question when all are train
functions, and is left out when it mixes the two. No test function is ever seen in training.

**Names.** OpenAI tool names match ``^[a-zA-Z0-9_-]{1,64}$``, so ``math.factorial`` is offered as
``math_factorial``; the checker maps it back exactly as BFCL does for OpenAI's models
(``underscore_to_dot``).
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import sys
import types
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

# The AST-checked Python categories (BFCL v4). Java/JavaScript and the multi-turn, live-irrelevance
# and web categories need other checkers or an execution environment.
CATEGORIES: tuple[str, ...] = ("simple_python", "multiple", "parallel", "parallel_multiple", "live_simple")

# The model name the checker is told (its MODEL_CONFIG_MAPPING decides underscore_to_dot).
CHECKER_MODEL = "edgecloud"

_TYPES = {"dict": "object", "float": "number", "tuple": "array", "integer": "integer", "string": "string",
          "boolean": "boolean", "array": "array", "number": "number", "object": "object"}


class BFCLError(Exception):
    """The BFCL data or checker cannot be read (the package is missing or its files changed)."""


@dataclass
class Question:
    """One BFCL question: the chat messages, the functions offered, and its possible answers."""

    id: str
    category: str
    messages: list[dict[str, Any]]
    functions: list[dict[str, Any]]
    ground_truth: list[dict[str, dict[str, list[Any]]]]
    tools: list[dict[str, Any]] = field(default_factory=list)

    @property
    def function_names(self) -> list[str]:
        return [f["name"] for f in self.functions]

    def target_calls(self) -> list[dict[str, Any]]:
        """One correct answer as OpenAI tool calls ``{"name", "arguments"}``: for each parameter the
        first acceptable value; a parameter whose only acceptable values are "" (left out) is left out."""
        calls = []
        for call in self.ground_truth:
            ((name, params),) = call.items()
            calls.append({"name": tool_name(name), "arguments": _first_answer(params)})
        return calls


def _first_answer(params: dict[str, list[Any]]) -> dict[str, Any]:
    arguments = {}
    for key, values in params.items():
        chosen = [v for v in values if v != ""]
        if chosen:
            value = chosen[0]
            # a nested dict's possible answers are themselves lists per key
            arguments[key] = _first_answer(value) if isinstance(value, dict) else value
    return arguments


def tool_name(name: str) -> str:
    """A BFCL function name as an OpenAI tool name."""
    return re.sub(r"[^a-zA-Z0-9_-]", "_", name)[:64]


def json_schema(parameters: dict[str, Any]) -> dict[str, Any]:
    """BFCL's parameter description (``dict``, ``float``, ``tuple``, ``any``) as JSON Schema."""

    def convert(node: Any) -> Any:
        if not isinstance(node, dict):
            return node
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key == "type" and isinstance(value, str):
                if value != "any":
                    out["type"] = _TYPES.get(value, value)
            elif key == "properties" and isinstance(value, dict):
                out["properties"] = {name: convert(sub) for name, sub in value.items()}
            elif key == "items":
                out["items"] = convert(value)
            elif key in ("additionalProperties",) and isinstance(value, dict):
                out[key] = convert(value)
            elif key == "optional":
                continue
            else:
                out[key] = copy.deepcopy(value)
        if out.get("type") == "array" and "items" not in out:
            out["items"] = {}
        return out

    schema = convert(parameters)
    schema.setdefault("type", "object")
    return schema


def to_tool(function: dict[str, Any]) -> dict[str, Any]:
    """A BFCL function as an OpenAI ``tools`` entry."""
    return {
        "type": "function",
        "function": {
            "name": tool_name(function["name"]),
            "description": function.get("description", ""),
            "parameters": json_schema(function.get("parameters", {"type": "dict", "properties": {}})),
        },
    }


def _data_dir() -> Any:
    try:
        return resources.files("bfcl_eval") / "data"
    except ModuleNotFoundError as error:
        raise BFCLError("the BFCL data is not installed: pip install --no-deps 'bfcl-eval==2026.3.23'") from error


def load_category(category: str) -> list[Question]:
    """Every question of one BFCL v4 category with its possible answers."""
    if category not in CATEGORIES:
        raise BFCLError(f"category must be one of {', '.join(CATEGORIES)}, got {category!r}")
    data = _data_dir()
    try:
        questions = [json.loads(line) for line in (data / f"BFCL_v4_{category}.json").read_text().splitlines() if line]
        answers = {
            a["id"]: a["ground_truth"]
            for a in map(json.loads, (data / "possible_answer" / f"BFCL_v4_{category}.json").read_text().splitlines())
        }
    except FileNotFoundError as error:
        raise BFCLError(f"BFCL file missing for {category}: {error.filename}") from error
    out = []
    for q in questions:
        turns = q["question"]
        if len(turns) != 1 or q["id"] not in answers:
            continue
        out.append(Question(
            id=q["id"], category=category, messages=list(turns[0]), functions=q["function"],
            ground_truth=answers[q["id"]], tools=[to_tool(f) for f in q["function"]],
        ))
    return out


def function_side(name: str, test_fraction: float, salt: str = "netgpt-split-v1") -> str:
    """``"test"`` or ``"train"`` for a function name: a stable hash, not Python's per-process one."""
    digest = hashlib.sha256(f"{salt}:{name}".encode()).digest()
    return "test" if int.from_bytes(digest[:8], "big") / 2**64 < test_fraction else "train"


@dataclass
class Split:
    train: list[Question]
    test: list[Question]
    dropped: int
    train_functions: set[str]
    test_functions: set[str]


def split_by_function(questions: Iterable[Question], test_fraction: float = 0.3) -> Split:
    """Train and test questions with disjoint function sets (see the module docstring)."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    train, test, dropped = [], [], 0
    for q in questions:
        sides = {function_side(name, test_fraction) for name in q.function_names}
        if sides == {"test"}:
            test.append(q)
        elif sides == {"train"}:
            train.append(q)
        else:
            dropped += 1
    train_functions = {n for q in train for n in q.function_names}
    test_functions = {n for q in test for n in q.function_names}
    assert not train_functions & test_functions
    return Split(train, test, dropped, train_functions, test_functions)


def load_split(categories: Iterable[str] = CATEGORIES, test_fraction: float = 0.3) -> Split:
    return split_by_function([q for c in categories for q in load_category(c)], test_fraction)


def _checker() -> Any:
    """BFCL's ``ast_checker``. Its module imports ``MODEL_CONFIG_MAPPING`` only to ask whether a model's
    tool names had '.' replaced by '_'; the real mapping imports every API vendor's SDK (1.9 GB with
    its dependencies), so for our one model we provide that one entry and nothing else."""
    name = "bfcl_eval.constants.model_config"
    if name not in sys.modules:
        config = types.ModuleType(name)

        @dataclass
        class _Config:
            underscore_to_dot: bool = True

        config.MODEL_CONFIG_MAPPING = {CHECKER_MODEL: _Config()}  # type: ignore[attr-defined]
        sys.modules[name] = config
    try:
        from bfcl_eval.eval_checker.ast_eval.ast_checker import ast_checker
    except ModuleNotFoundError as error:
        raise BFCLError("the BFCL checker is not installed: pip install --no-deps 'bfcl-eval==2026.3.23'") from error
    return ast_checker


@dataclass
class Score:
    correct: bool
    error: str = ""


def score(question: Question, calls: list[dict[str, Any]] | None) -> Score:
    """BFCL's AST checker on OpenAI-style calls ``[{"name", "arguments": dict}]`` (``None``: the
    answer had no parsable tool call)."""
    if not calls:
        return Score(False, "no tool call")
    from bfcl_eval.constants.enums import Language

    checker = _checker()
    model_output = [{call["name"]: call["arguments"]} for call in calls if isinstance(call.get("arguments"), dict)]
    if len(model_output) != len(calls):
        return Score(False, "arguments are not a JSON object")
    try:
        result = checker(question.functions, model_output, question.ground_truth, Language.PYTHON,
                         question.category, CHECKER_MODEL)
    except Exception as error:  # the checker raises on shapes it does not expect (a wrong nesting)
        return Score(False, f"checker: {type(error).__name__}: {error}")
    return Score(bool(result["valid"]), "; ".join(map(str, result.get("error", []))))
