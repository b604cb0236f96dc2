"""Budget-aware completion on the held-out BFCL functions: from the start and from random states
of each argument schema, the closing path (llm/structured.py) completes a document that
jsonschema accepts, so an answer cut by max_tokens still validates."""

from __future__ import annotations

import json
import random

import jsonschema
import xgrammar

from edgecloud.edge.netgpt.bfcl import load_split
from edgecloud.llm.demo_model import DEMO_MODEL_DIR
from edgecloud.llm.structured import StructuredOutputs, StructuredOutputsParams, json_schema_text


def test_closing_paths_of_held_out_schemas_validate_from_random_states() -> None:
    backend = StructuredOutputs(DEMO_MODEL_DIR / "tokenizer.json", 4096, [2])
    schemas = {json_schema_text(t["function"]["parameters"]) for q in load_split().test for t in q.tools}
    assert len(schemas) > 200
    rng = random.Random(0)
    mask = xgrammar.allocate_token_bitmask(1, backend.vocab_size)
    for text in sorted(schemas):
        schema = json.loads(text)
        for walk in (0, rng.randint(1, 60)):  # from the start, and from a random state
            state = backend.start(StructuredOutputsParams(json_schema=text))
            prefix = bytearray()
            for _ in range(walk):  # a random walk the grammar allows
                allowed = [b for b in backend._allowed_bytes(state.matcher, mask) if b < 0x80]
                if not allowed or (state.matcher.is_completed() and rng.random() < 0.3):
                    break
                prefix.append(rng.choice(allowed))
                assert state.matcher.accept_token(backend._byte_token[prefix[-1]])
            closing = backend.closing(state)
            assert closing is not None
            jsonschema.validate(json.loads((bytes(prefix) + closing.text).decode()), schema)
