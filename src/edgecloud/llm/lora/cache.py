"""The adapter cache's tiers and policy: disk -> host memory -> device slots (S-LoRA's unified
adapter store, arXiv 2311.03285, §4, with vLLM's ``max_cpu_loras``/``max_loras`` bounds).

* **disk**: every registered adapter's directory; any number.
* **host**: parsed adapters, at most ``host_capacity``, least recently used evicted first; a
  pinned adapter is never evicted (and one received from a peer, which has no file to come back
  from). Loading past a host tier full of pinned adapters is an error, never a silent eviction.
* **device**: ``num_slots`` slots, least recently used first. A step asks for the slots of the
  adapters it runs (``activate``): the scheduler admits at most ``num_slots`` distinct adapters
  among running requests, so a step's adapters always fit, and only slots that the step does not
  use are given to others.

Plain bookkeeping, no tensors and no clock: reading an adapter and writing a slot are the two
callables it is given, so the same policy runs in the engine and in a simulator.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

from edgecloud.llm.errors import InvalidRequestError

T = TypeVar("T")


@dataclass
class AdapterEntry:
    name: str
    path: str | None  # None: received from a peer, held in host memory only
    pinned: bool
    rank: int
    num_bytes: int
    digest: str


@dataclass
class CacheStats:
    disk_reads: int = 0
    host_hits: int = 0
    slot_hits: int = 0
    slot_writes: int = 0
    host_evictions: int = 0


class AdapterCache(Generic[T]):
    def __init__(
        self, num_slots: int, host_capacity: int, read: Callable[[AdapterEntry], T],
        write_slot: Callable[[int, T], None], clear_slot: Callable[[int], None] | None = None,
    ) -> None:
        self.num_slots = num_slots
        self.host_capacity = host_capacity
        self._read = read
        self._write_slot = write_slot
        self._clear_slot = clear_slot
        self.entries: dict[str, AdapterEntry] = {}
        self.host: OrderedDict[str, T] = OrderedDict()  # least recently used first
        self.slots: list[str | None] = [None] * num_slots
        self.slot_order: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_slots))
        self.stats = CacheStats()

    # -- registry -------------------------------------------------------------------------------

    def add(self, entry: AdapterEntry, adapter: T) -> None:
        """Registers an adapter already read and checked, and keeps it in host memory."""
        if entry.name in self.entries:
            raise InvalidRequestError(f"LoRA adapter {entry.name!r} is already loaded", "lora_name")
        self._make_host_room(entry.name, pinned=entry.pinned or entry.path is None)
        self.entries[entry.name] = entry
        self.host[entry.name] = adapter

    def remove(self, name: str) -> AdapterEntry:
        entry = self.entries.pop(name, None)
        if entry is None:
            raise KeyError(name)
        self.host.pop(name, None)
        for slot, held in enumerate(self.slots):
            if held == name:
                self.slots[slot] = None
                if self._clear_slot is not None:
                    self._clear_slot(slot)
        return entry

    def set_pinned(self, name: str, pinned: bool) -> None:
        self.entries[name].pinned = pinned

    def slot_of(self, name: str) -> int | None:
        try:
            return self.slots.index(name)
        except ValueError:
            return None

    # -- tiers ----------------------------------------------------------------------------------

    def _evictable(self, name: str) -> bool:
        entry = self.entries.get(name)
        return entry is not None and not entry.pinned and entry.path is not None

    def _make_host_room(self, incoming: str, pinned: bool) -> None:
        while len(self.host) >= self.host_capacity:
            victim = next((n for n in self.host if self._evictable(n)), None)
            if victim is None:
                raise InvalidRequestError(
                    f"cannot load LoRA adapter {incoming!r}: the host adapter cache is full "
                    f"({len(self.host)} of max_cpu_loras={self.host_capacity}, all pinned or held only in memory); "
                    "unload or unpin one, or raise --max-cpu-loras", "lora_name")
            del self.host[victim]
            self.stats.host_evictions += 1

    def put_host(self, name: str, adapter: T) -> None:
        """Keeps an adapter read outside ``host_adapter`` (the engine's loader thread) in host
        memory, as ``host_adapter`` would have after its read."""
        if name in self.host:
            self.host.move_to_end(name)
            return
        self._make_host_room(name, self.entries[name].pinned)
        self.stats.disk_reads += 1
        self.host[name] = adapter

    def host_adapter(self, name: str) -> T:
        """The parsed adapter, read from disk again when it was evicted from host memory."""
        adapter = self.host.get(name)
        if adapter is not None:
            self.host.move_to_end(name)
            self.stats.host_hits += 1
            return adapter
        entry = self.entries[name]
        self._make_host_room(name, entry.pinned)
        adapter = self._read(entry)
        self.stats.disk_reads += 1
        self.host[name] = adapter
        return adapter

    def activate(self, names: Iterable[str]) -> dict[str, int]:
        """Slots of the adapters one step runs, loading those not resident into the least recently
        used slots that the step does not use."""
        wanted = list(dict.fromkeys(names))
        if len(wanted) > self.num_slots:
            raise InvalidRequestError(f"a step uses {len(wanted)} adapters but there are {self.num_slots} slots "
                                      "(max_loras)", "max_loras")
        result: dict[str, int] = {}
        for name in wanted:
            slot = self.slot_of(name)
            if slot is not None:
                result[name] = slot
                self.stats.slot_hits += 1
        for name in wanted:
            if name in result:
                continue
            used = set(result.values())
            slot = next(s for s in self.slot_order if s not in used)
            self._write_slot(slot, self.host_adapter(name))
            self.stats.slot_writes += 1
            self.slots[slot] = name
            result[name] = slot
        for slot in result.values():
            self.slot_order.move_to_end(slot)
        return result
