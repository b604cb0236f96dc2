"""The engine core's adapters: load and unload at run time, the cache tiers, and each step's slots.

``LoRAManager`` is what ``EngineCore``'s adapter control operations and the model runner talk
to: it reads and checks PEFT directories (``adapter.load_adapter``), keeps them in an
``AdapterCache`` (disk, host, device slots), writes slots (``LoRASlots``) and builds each step's
``LoRABatch``. An adapter can also come from a peer instance as tensors (``export``/``import_``),
which is how the cluster reaches an adapter that another instance holds instead of reading disk.
"""

from __future__ import annotations

from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

import torch

from edgecloud.llm.config import ModelConfig
from edgecloud.llm.errors import InvalidRequestError
from edgecloud.llm.lora.adapter import LoRAAdapter, LoRAAdapterError, adapter_from_tensors, load_adapter
from edgecloud.llm.lora.batch import LoRABatch
from edgecloud.llm.lora.cache import AdapterCache, AdapterEntry
from edgecloud.llm.lora.slots import LoRASlots
from edgecloud.llm.lora.transfer import TRANSPORTS, discard_shm, export_to_shm, import_from_shm


def check_adapter_name(name: Any) -> str:
    if not isinstance(name, str) or not name or len(name) > 256 or any(c.isspace() for c in name):
        raise InvalidRequestError(f"lora_name must be a non-empty string without spaces, got {name!r}", "lora_name")
    return name


class LoRAManager:
    def __init__(self, mc: ModelConfig, max_loras: int, max_rank: int, max_cpu_loras: int, dtype: torch.dtype,
                 device: torch.device, reserved_names: tuple[str, ...] = ()) -> None:
        self.model_config = mc
        self.max_rank = max_rank
        self.dtype = dtype
        self.reserved_names = set(reserved_names)
        self.slots = LoRASlots(mc, max_loras, max_rank, dtype, device)
        self.cache: AdapterCache[LoRAAdapter] = AdapterCache(
            max_loras, max_cpu_loras, self._read, self.slots.write, self.slots.clear
        )
        self.digests: dict[str, str] = {}  # every name ever loaded -> the digest it last had
        # reads of adapters evicted from host memory, off the step (``ready``): name -> (the entry
        # read, its future); one loader thread, so reads queue as on one disk
        self._loads: dict[str, tuple[AdapterEntry, Future[LoRAAdapter]]] = {}
        self._loader: ThreadPoolExecutor | None = None
        self.async_reads = 0  # reads done by the loader thread

    def _read(self, entry: AdapterEntry) -> LoRAAdapter:
        assert entry.path is not None, "adapters held only in memory are never evicted"
        adapter = load_adapter(entry.name, entry.path, self.model_config, self.max_rank, self.dtype)
        if adapter.digest != entry.digest:
            raise LoRAAdapterError(f"LoRA adapter {entry.name!r}: the files in {entry.path} changed since it was "
                                   "loaded; load it again", "lora_path")
        return adapter

    # -- registry -------------------------------------------------------------------------------

    def has(self, name: str) -> bool:
        return name in self.cache.entries

    def add(self, name: str, path: str, pinned: bool = False) -> tuple[LoRAAdapter, bool]:
        """Reads, checks and registers an adapter. Returns it and whether another adapter was known
        under this name before (then KV blocks cached under the name are stale)."""
        check_adapter_name(name)
        if name in self.reserved_names:
            raise InvalidRequestError(f"lora_name {name!r} is the base model's name", "lora_name")
        if name in self.cache.entries:
            raise InvalidRequestError(f"LoRA adapter {name!r} is already loaded", "lora_name")
        if not isinstance(path, str) or not path:
            raise InvalidRequestError(f"lora_path must be a directory path, got {path!r}", "lora_path")
        adapter = load_adapter(name, path, self.model_config, self.max_rank, self.dtype)
        return adapter, self._register(adapter, pinned)

    def _register(self, adapter: LoRAAdapter, pinned: bool) -> bool:
        entry = AdapterEntry(adapter.name, adapter.path, pinned, adapter.rank, adapter.num_bytes, adapter.digest)
        self.cache.add(entry, adapter)
        previous = self.digests.get(adapter.name)
        self.digests[adapter.name] = adapter.digest
        return previous is not None and previous != adapter.digest

    def remove(self, name: str) -> None:
        try:
            self.cache.remove(name)
        except KeyError:
            raise InvalidRequestError(f"unknown LoRA adapter {name!r}", "lora_name") from None

    def set_pinned(self, name: str, pinned: bool) -> None:
        if name not in self.cache.entries:
            raise InvalidRequestError(f"unknown LoRA adapter {name!r}", "lora_name")
        self.cache.set_pinned(name, pinned)

    def describe(self) -> list[dict[str, Any]]:
        out = []
        for name, e in self.cache.entries.items():
            out.append({"name": name, "path": e.path, "rank": e.rank, "bytes": e.num_bytes, "pinned": e.pinned,
                        "in_host": name in self.cache.host, "slot": self.cache.slot_of(name), "digest": e.digest})
        return out

    # -- peers ----------------------------------------------------------------------------------

    def export(self, name: str, transport: str = "inline") -> dict[str, Any]:
        """The adapter as PEFT config + tensors (CPU), for a peer instance to import: the tensors in
        the reply (``inline``) or written to a shared-memory file whose handle is in the reply
        (``shm``, a peer on this host: ``transfer``)."""
        if name not in self.cache.entries:
            raise InvalidRequestError(f"unknown LoRA adapter {name!r}", "lora_name")
        if transport not in TRANSPORTS:
            raise InvalidRequestError(f"transport must be one of {TRANSPORTS}, got {transport!r}", "transport")
        adapter = self.cache.host_adapter(name)
        tensors = {k: v.cpu() for k, v in adapter.tensors().items()}
        out: dict[str, Any] = {"lora_name": name, "config": adapter.config, "digest": adapter.digest}
        if transport == "shm":
            out["shm"] = export_to_shm(tensors)
        else:
            out["tensors"] = tensors
        return out

    def import_(self, lora_name: str, config: dict[str, Any], tensors: dict[str, torch.Tensor] | None, digest: str,
                pinned: bool = False, shm: dict[str, Any] | None = None) -> bool:
        """Registers an adapter from a peer: its tensors, or the handle of the shared-memory file
        they were written to (exactly one of the two)."""
        check_adapter_name(lora_name)
        if lora_name in self.cache.entries:
            if shm is not None and isinstance(shm.get("name"), str):
                discard_shm(shm["name"])
            raise InvalidRequestError(f"LoRA adapter {lora_name!r} is already loaded", "lora_name")
        if (tensors is None) == (shm is None):
            raise InvalidRequestError("import_lora_adapter needs tensors or shm (exactly one)", "tensors")
        if shm is not None:
            tensors = import_from_shm(shm)
        adapter = adapter_from_tensors(lora_name, None, config, tensors, self.model_config, self.max_rank, self.dtype,
                                       digest)
        return self._register(adapter, pinned)

    # -- reads off the step ---------------------------------------------------------------------

    def ready(self, name: str) -> bool:
        """Whether adapter ``name`` is in host memory, so a step can take it into a slot without a
        read. If not, its read starts in the loader thread (once) and this says False until it is
        done; the scheduler keeps the adapter's requests waiting meanwhile, and the others run.
        A read that failed says True: the step's own read then raises the error, as without the
        loader."""
        if name in self.cache.host or self.cache.slot_of(name) is not None:
            return True
        entry = self.cache.entries.get(name)
        if entry is None or entry.path is None:
            return True  # unknown (the step refuses it) or held only in memory
        load = self._loads.get(name)
        if load is not None and load[0] is not entry:  # unloaded and loaded again meanwhile
            del self._loads[name]
            load = None
        if load is None:
            if self._loader is None:
                self._loader = ThreadPoolExecutor(1, thread_name_prefix="lora-loader")
            self._loads[name] = (entry, self._loader.submit(self._read, entry))
            return False
        if not load[1].done():
            return False
        self._harvest(name)
        return True

    def _harvest(self, name: str) -> None:
        """Takes a finished read into host memory (a failed one is dropped: the step reads again)."""
        entry, future = self._loads.pop(name)
        if self.cache.entries.get(name) is not entry:
            return
        try:
            self.cache.put_host(name, future.result())
        except Exception:  # the step's own read raises it again, where it is reported
            return
        self.async_reads += 1

    @property
    def loading(self) -> bool:
        """Whether a read is in flight (finished ones are taken into host memory first)."""
        for name in [n for n, (_, f) in self._loads.items() if f.done()]:
            self._harvest(name)
        return bool(self._loads)

    def wait_for_loads(self, timeout: float) -> None:
        """Blocks until one read in flight is done or ``timeout`` seconds pass."""
        futures = [f for _, f in self._loads.values()]
        if futures:
            wait(futures, timeout, return_when=FIRST_COMPLETED)

    def close(self) -> None:
        """Stops the loader thread: reads not started are cancelled, one in progress finishes on
        its own (a file read cannot be interrupted) and is dropped. Safe to call twice."""
        loader, self._loader = self._loader, None
        if loader is not None:
            loader.shutdown(wait=False, cancel_futures=True)
        self._loads.clear()

    # -- steps ----------------------------------------------------------------------------------

    def batch(self, row_adapters: list[str | None]) -> LoRABatch:
        """Activates the step's adapters in device slots and returns its segments."""
        slots = self.cache.activate(n for n in row_adapters if n is not None)
        batch = LoRABatch.from_rows([-1 if n is None else slots[n] for n in row_adapters])
        self.slots.step_max_rank = max((self.cache.entries[n].rank for n in slots), default=0)
        return batch
