"""Which rows of one engine step use which adapter: the ``lora`` slot of the ``StepContext``.

The runner puts the rows of each adapter next to each other (prefill chunks and decodes are each
sorted by adapter), so a step's rows fall into runs — segments — of one device slot each, as
Punica's SGMV takes them. Rows without an adapter belong to no segment and get no update.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class LoRABatch:
    slots: list[int]  # device slot of each segment
    starts: list[int]  # first row of each segment
    ends: list[int]  # one past its last row
    num_rows: int
    _device: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = field(default_factory=dict, repr=False)

    @classmethod
    def from_rows(cls, row_slots: list[int]) -> LoRABatch:
        """Segments from each row's slot (-1: no adapter), runs of equal slots in row order."""
        slots, starts, ends = [], [], []
        row = 0
        n = len(row_slots)
        while row < n:
            slot = row_slots[row]
            end = row + 1
            while end < n and row_slots[end] == slot:
                end += 1
            if slot >= 0:
                slots.append(slot)
                starts.append(row)
                ends.append(end)
            row = end
        return cls(slots, starts, ends, n)

    @property
    def max_segment_rows(self) -> int:
        return max((e - s for s, e in zip(self.starts, self.ends, strict=True)), default=0)

    def on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(slots, starts, lengths) as int32 tensors on ``device`` (built once per step, for the GPU kernels)."""
        key = str(device)
        if key not in self._device:
            lengths = [e - s for s, e in zip(self.starts, self.ends, strict=True)]
            self._device[key] = tuple(  # type: ignore[assignment]
                torch.tensor(v, dtype=torch.int32, device=device) for v in (self.slots, self.starts, lengths)
            )
        return self._device[key]
