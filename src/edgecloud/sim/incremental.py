"""Incremental stepping: the simulator's per-step work over decoding requests made O(what changed).

An instance near saturation runs ~150 requests, almost all of them decoding: each step gives every
one of them one token. Stepped through ``Scheduler.schedule``/``update`` each step costs O(batch)
Python work (the scheduler's loop, one ``StepShape`` and one ``EngineCoreOutput`` per request), and
that bounds the simulator at cluster scale. With ``incremental=True`` an instance keeps its
decoding requests in ``LazyDecodes``: their computed tokens are ``offset + step`` for a step counter,
written back to the ``Request`` only where the engine's code must read them. A step then touches
only:

* the requests whose next token starts a new KV block (they ``grow`` by one block, in running
  order, as the scheduler's loop grows them) and those whose block fills (``register_computed``
  keys it at the step's end): ~batch/block_size a step, found by the offset modulo the block size;
* the requests that finish at this step (known when they start decoding: ``ignore_eos`` requests
  end by length only), finished by ``Scheduler.finish``;
* the other running requests (prefill chunks), planned and updated by the scheduler's own rules
  and code (``Scheduler.update`` on them), and the waiting ones, admitted by the scheduler's own
  ``_admit_waiting`` with the budget the decodes leave.

The step's duration comes from ``AggregatePricer``: ``PerfModel.step_cost``'s terms with the decodes'
attention summed from their count and total context, which is exact where every decode's attention
is memory-bound at every context (checked from the model: then it is affine in the context).

Anything else (a step whose blocks would not suffice, so the scheduler would preempt; flex or LoRA
limits; a MoE or data-parallel cost model) falls back to the scheduler's whole ``schedule`` and
``update`` for that step after writing every lazy request back; the lazy set is rebuilt after it.
Per-request times agree with the step-by-step simulation to float rounding (the decodes' attention
is summed in another order); ``tests/sim/test_incremental.py`` compares them.
"""

from __future__ import annotations

from collections.abc import Sequence

from edgecloud.llm.perf_model import PerfModel, StepShape
from edgecloud.llm.request_state import Request


class AggregatePricer:
    """``PerfModel.step_time`` of a batch given as a few ``StepShape``s plus ``n`` decodes (one new
    token each, sampled) whose contexts sum to ``context_sum``. ``ok`` is False where the model's
    cost cannot be summed so (MoE, data-parallel attention, or a decode whose attention is
    compute-bound at some context)."""

    def __init__(self, perf: PerfModel) -> None:
        self.perf = perf
        m, hw, n = perf.model, perf.hw, perf.parallel.devices
        dp = perf.parallel.data_parallel_attention and n > 1
        self.ok = (m.moe is None and m.num_moe_layers == 0 and not dp and type(perf).step_time is PerfModel.step_time
                   and type(perf).step_cost is PerfModel.step_cost)
        self.split = n
        kv_token_layer = m.kv_elements_per_token_layer * m.kv_bytes_per_element
        kv_share = 1 if m.mla is not None else min(n, m.num_kv_heads)
        # a decode at context c: flops = flops_per_pair * c / split,
        # bytes = c * kv_token_layer / kv_share + (2 q act / split + kv_token_layer / kv_share)
        self.bytes_per_context = kv_token_layer / kv_share
        self.bytes_per_decode = 2 * m.q_size * m.act_bytes / n + kv_token_layer / kv_share
        compute_per_context = m.attention_flops_per_pair / n / (hw.peak_flops * hw.matmul_efficiency)
        memory_per_context = self.bytes_per_context / (hw.memory_bandwidth * hw.memory_efficiency)
        # memory-bound at every context c >= 1 (compute has no constant term)
        self.ok = self.ok and compute_per_context <= memory_per_context
        self.bandwidth = hw.memory_bandwidth * hw.memory_efficiency
        self.overhead = hw.step_overhead_s + m.num_layers * hw.layer_overhead_s
        # the terms that depend only on the step's token or sampled counts, computed once per count
        self._parts: dict[int, tuple[float, float]] = {}
        self._heads: dict[int, float] = {}

    def step_time(self, shapes: Sequence[StepShape], n: int, context_sum: int) -> float:
        perf = self.perf
        m = perf.model
        count = n + len(shapes)
        if not count:
            return 0.0
        tokens = n + sum(s.num_new_tokens for s in shapes)
        sampled = n + sum(1 for s in shapes if s.sampled)
        parts = self._parts.get(tokens)
        if parts is None:
            parts = self._parts[tokens] = self._token_parts(tokens)
        layers, network = parts
        lm_head = self._heads.get(sampled)
        if lm_head is None:
            lm_head = self._heads[sampled] = self._lm_head(sampled)
        kv_token_layer = self.bytes_per_context
        attention = (context_sum * kv_token_layer + n * self.bytes_per_decode) / self.bandwidth if n else 0.0
        for s in shapes:
            flops = m.attention_flops_per_pair * perf._pairs(s) / self.split
            bytes_moved = (s.context_len * kv_token_layer
                           + s.num_new_tokens * (2 * m.q_size * m.act_bytes / self.split + kv_token_layer))
            attention += perf._op(flops, bytes_moved)
        attention = m.num_layers * attention
        overhead = self.overhead + count / 1 * perf.hw.seq_overhead_s
        return layers + attention + lm_head + overhead + 0.0 + network

    def _token_parts(self, tokens: int) -> tuple[float, float]:
        """``step_cost``'s layers and network terms for ``tokens`` new tokens (they depend on nothing else)."""
        perf, split = self.perf, self.split
        m = perf.model
        h, inter = m.hidden_size, m.intermediate_size
        attention_part = sum(perf._dense(tokens, rows, cols, split) for rows, cols in m.attention_matrices)
        mlp = perf._dense(tokens, h, 2 * inter, split) + perf._dense(tokens, inter, h, split)
        layers = m.num_layers * (attention_part + mlp) + 0 * attention_part
        network = 0.0
        if split > 1:
            network = 2 * m.num_layers * perf._collective(2 * (split - 1) / split * tokens * h * m.act_bytes)
        return layers, network

    def _lm_head(self, sampled: int) -> float:
        perf = self.perf
        m = perf.model
        head = m.lm_head_params / self.split
        moved = head * m.weight_bytes_per_param + sampled * (m.hidden_size + m.vocab_size) * 4
        return perf._op(2 * sampled * head, moved)


class LazyDecodes:
    """An instance's decoding requests, advanced by a step counter: a request's computed tokens are
    its offset plus ``step``. Grouped by offset modulo the block size (who crosses into a new block,
    whose block fills, at a given step) and by the step whose end finishes them."""

    def __init__(self, block_size: int) -> None:
        self.block_size = block_size
        self.step = 0  # steps applied since the instance started
        self.offset: dict[Request, int] = {}
        self.phase: list[dict[Request, None]] = [{} for _ in range(block_size)]  # by offset % block_size
        self.finishing: dict[int, list[Request]] = {}  # step index -> requests that finish at its end
        self.offset_sum = 0

    def __len__(self) -> int:
        return len(self.offset)

    def __contains__(self, req: object) -> bool:
        return req in self.offset

    def add(self, req: Request, max_model_len: int) -> None:
        """``req`` decodes from the next step on (``step`` steps applied so far)."""
        o = req.num_computed_tokens - self.step
        self.offset[req] = o
        self.phase[o % self.block_size][req] = None
        self.offset_sum += o
        # each step adds one output token: it ends by length after ``left`` more steps
        left = min(req.params.max_tokens - req.num_output_tokens, max_model_len - req.num_tokens)
        self.finishing.setdefault(self.step + max(left, 1) - 1, []).append(req)

    def remove(self, req: Request) -> None:
        o = self.offset.pop(req)
        del self.phase[o % self.block_size][req]
        self.offset_sum -= o

    def crossing(self) -> list[Request]:
        """Requests whose next token (this step's) starts a new block."""
        return list(self.phase[(-self.step) % self.block_size])

    def filling(self) -> list[Request]:
        """Requests whose block becomes full with this step's token."""
        return list(self.phase[(-self.step - 1) % self.block_size])

    def context_sum(self) -> int:
        """This step's contexts (computed tokens + the one it computes), summed over the decodes."""
        return self.offset_sum + len(self.offset) * (self.step + 1)

    def write_back(self, req: Request, extra: int = 0) -> None:
        """Brings ``req`` to ``step + extra`` steps: computed tokens and sampled tokens."""
        computed = self.offset[req] + self.step + extra
        req.num_computed_tokens = computed
        missing = computed + 1 - len(req.all_token_ids)
        if missing > 0:
            req.all_token_ids.extend([0] * missing)

    def clear(self) -> None:
        """Writes every request back and forgets them (before the scheduler's own step)."""
        for req in self.offset:
            self.write_back(req)
        self.offset.clear()
        for phase in self.phase:
            phase.clear()
        self.finishing.clear()
        self.offset_sum = 0


def decodable(req: Request) -> bool:
    """Whether a running request can be advanced lazily: it decodes (one token left to compute,
    already sampled one) and only its length ends it."""
    p = req.params
    return (req.num_tokens - req.num_computed_tokens == 1 and req.num_output_tokens >= 1 and p.ignore_eos
            and not p.stop_token_ids and req.service_tier == "default"
            and (req.kv_transfer is None or not req.kv_transfer.export))
