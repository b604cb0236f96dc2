"""Where the embedded demo model lives: the engine's default when no model directory is given.

The model is a tiny Llama trained on fortune cookies by ``scripts/train_demo_model.py`` so that
``make serve`` works offline with no argument; its README (next to the weights) says what it is.
"""

from importlib import resources
from pathlib import Path

# The package is installed as plain files (editable or wheel, never zipped), so the packaged
# asset is a real directory that loaders can open by path.
DEMO_MODEL_DIR: Path = Path(str(resources.files("edgecloud") / "assets" / "demo-llama"))
