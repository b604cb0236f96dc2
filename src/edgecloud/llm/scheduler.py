"""Continuous batching: which sequences run in the next step, and how many tokens each.

Every step mixes decodes and prefill chunks under a token budget (``max_num_batched_tokens``)
and a sequence cap (``max_num_seqs``). Running sequences go first, in priority order (smaller
``priority`` first, FCFS within one); long prompts are prefilled in chunks. When KV blocks run
out, the least urgent running sequence is preempted by recompute: its blocks are freed and it
waits again, to be rebuilt later (mostly from the prefix cache).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from edgecloud.llm.block_manager import BlockManager
from edgecloud.llm.sequence import Sequence, SequenceStatus


@dataclass
class ScheduledSeq:
    seq: Sequence
    num_new_tokens: int

    @property
    def samples(self) -> bool:
        """Whether this step reaches the sequence's last token, so a next token is sampled."""
        return self.seq.num_computed_tokens + self.num_new_tokens == self.seq.num_tokens


@dataclass
class SchedulerOutput:
    scheduled: list[ScheduledSeq] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)
    exhausted: list[Sequence] = field(default_factory=list)  # cannot fit even alone: must finish

    @property
    def num_tokens(self) -> int:
        return sum(s.num_new_tokens for s in self.scheduled)


class Scheduler:
    def __init__(self, block_manager: BlockManager, max_num_seqs: int, max_num_batched_tokens: int) -> None:
        self.block_manager = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: list[Sequence] = []  # sorted by sort_key
        self.running: list[Sequence] = []  # sorted by sort_key
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        seq.status = SequenceStatus.WAITING
        bisect.insort(self.waiting, seq, key=lambda s: s.sort_key)

    def add_running(self, seq: Sequence) -> None:
        """A sequence that already holds its blocks (a fork) joins the running set."""
        seq.status = SequenceStatus.RUNNING
        bisect.insort(self.running, seq, key=lambda s: s.sort_key)

    def remove(self, seq: Sequence) -> None:
        """Takes a sequence out of the queues and frees its blocks (finish or abort)."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.block_manager.release(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.max_num_batched_tokens
        bm = self.block_manager
        i = 0
        while i < len(self.running) and budget > 0 and len(out.scheduled) < self.max_num_seqs:
            seq = self.running[i]
            num_new = min(seq.num_tokens - seq.num_computed_tokens, budget)
            target = seq.num_computed_tokens + num_new
            while not bm.can_grow(seq, target):
                victim = self.running.pop()
                if victim is seq and not self.running and not out.scheduled:
                    # Alone and still no room: the pool cannot hold this sequence any longer.
                    out.exhausted.append(seq)
                    self.running.append(seq)
                    return out
                self._preempt(victim)
                out.preempted.append(victim)
                if victim is seq:
                    break
            else:
                bm.grow(seq, target)
                out.scheduled.append(ScheduledSeq(seq, num_new))
                budget -= num_new
                i += 1
                continue
            break
        if out.preempted:
            return out
        while self.waiting and budget > 0 and len(out.scheduled) < self.max_num_seqs:
            seq = self.waiting[0]
            admitted = bm.admit(seq, budget)
            if admitted is None:
                break
            self.waiting.pop(0)
            seq.status = SequenceStatus.RUNNING
            bisect.insort(self.running, seq, key=lambda s: s.sort_key)
            out.scheduled.append(ScheduledSeq(seq, admitted))
            budget -= admitted
        return out

    def _preempt(self, seq: Sequence) -> None:
        self.block_manager.release(seq)
        self.num_preemptions += 1
        self.add(seq)
