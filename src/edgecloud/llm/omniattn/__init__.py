"""OmniAttn: layer-wise KV compression with a searched layer pattern (OmniInfer, arXiv 2511.22481).

``pattern.py`` is the pattern file the engine takes; ``evaluate.py`` scores a pattern by running the
engine's own model code on held-out text; ``search.py`` finds a pattern under a KV budget;
``quality.py`` holds the long texts and the needle-in-a-haystack test; ``bench.py`` is
``edgecloud bench omniattn``. Design and results: docs/omniinfer.md.
"""

from edgecloud.llm.omniattn.pattern import LayerPattern

__all__ = ["LayerPattern"]
