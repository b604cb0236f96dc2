"""Where a model's files come from: ``--model`` resolved to a local HF-format directory.

``None`` or ``demo`` is the embedded fortune demo model (fast, for tests and demos); a directory is
an HF checkpoint. The front end and the engine core resolve the same name to the same directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgecloud.llm.errors import ModelLoadError

DEMO_NAME = "demo"


@dataclass(frozen=True)
class ModelSource:
    directory: Path
    name: str  # the id clients use unless the server overrides it


def resolve_model(model: str | None) -> ModelSource:
    if model is None or model == DEMO_NAME:
        from edgecloud.llm.demo_model import DEMO_MODEL_DIR

        return ModelSource(Path(DEMO_MODEL_DIR), "edgecloud-demo")
    path = Path(model).expanduser()
    if not path.is_dir():
        raise ModelLoadError(f"model directory {str(path)!r} does not exist (pass an HF model directory)")
    return ModelSource(path, model)
