"""WMLM: a wireless-native multimodal model (arXiv 2511.21707) on generated street scenes.

``dataset`` generates geometry-consistent samples (``scene``, ``channel``, ``sensors``, ``text``)
into shards; ``loaders`` reads DeepSense 6G and DeepMIMO v4 for users who have them; ``model``
holds the encoders, the wireless-anchored InfoNCE and the GPT-style channel decoder; ``train``
pretrains (one CPU or torchrun/DDP); ``tasks`` and ``bench`` compare the frozen model with light
heads against task-specific models. Stands apart from the LLM half: nothing here imports it.

Names are imported lazily so that ``edgecloud --help`` does not pay for torch or Sionna.
"""

from __future__ import annotations

from edgecloud.lazy_exports import lazy_getattr

_EXPORTS = {
    "GeneratorConfig": "edgecloud.wireless.dataset",
    "SampleGenerator": "edgecloud.wireless.dataset",
    "WirelessData": "edgecloud.wireless.dataset",
    "generate": "edgecloud.wireless.dataset",
    "load": "edgecloud.wireless.dataset",
    "ChannelConfig": "edgecloud.wireless.channel",
    "ChannelModel": "edgecloud.wireless.channel",
    "LAYOUTS": "edgecloud.wireless.scene",
    "CONFIGS": "edgecloud.wireless.model",
    "WMLM": "edgecloud.wireless.model",
    "ModelConfig": "edgecloud.wireless.model",
    "TrainConfig": "edgecloud.wireless.train",
    "pretrain": "edgecloud.wireless.train",
    "load_checkpoint": "edgecloud.wireless.train",
    "BenchConfig": "edgecloud.wireless.bench",
    "run_bench": "edgecloud.wireless.bench",
    "load_deepmimo": "edgecloud.wireless.loaders",
    "load_deepsense": "edgecloud.wireless.loaders",
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_getattr(__name__, globals(), _EXPORTS)
