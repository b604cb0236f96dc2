"""Multi-LoRA serving (LoRAServe, arXiv 2511.22880; S-LoRA; Punica): PEFT adapters read and checked
(``adapter``), an adapter cache over disk, host memory and device slots (``cache``, ``slots``),
the segmented LoRA matmul (``ops``; ``triton_ops`` on CUDA) in LoRA-capable layers (``layers``),
and the engine core's side of it (``manager``). Design: docs/lora.md.
"""

from edgecloud.llm.lora.adapter import LoRAAdapter, LoRAAdapterError, load_adapter
from edgecloud.llm.lora.batch import LoRABatch
from edgecloud.llm.lora.cache import AdapterCache, AdapterEntry
from edgecloud.llm.lora.manager import LoRAManager

__all__ = ["AdapterCache", "AdapterEntry", "LoRAAdapter", "LoRAAdapterError", "LoRABatch", "LoRAManager",
           "load_adapter"]
