"""OOCO's roofline bottleneck model (arXiv 2511.21862, §4; xLLM's offline-aware scheduler): the
engine's ``PerfModel`` asked the three questions OOCO schedules by.

- **Linear saturation batch** (relaxed pool): the smallest decode batch at which a layer's GEMMs
  reach the ridge point, FLOPs / bytes >= (peak FLOP/s x matmul efficiency) / (bandwidth x memory
  efficiency). Below it a decode step is memory-bound and one more sequence is almost free; past
  it every sequence costs compute. A relaxed instance admits offline requests up to this batch.
- **Predicted decode step** (strict pool): the step time of a batch of decodes, from the model
  priced per operator (QKV, attention per request, O, MLP, LM head, collectives, overheads).
- **Preferred length** (pull): the longest context one more decode may have while the predicted
  step stays under a share of the TPOT SLO (a binary search on the model), which a strict instance
  names when it takes offline decode work.

The ``PerfModel`` is the simulator's (hardware presets, or factors ``edgecloud sim calibrate``
fitted on this machine): the same numbers price the simulated steps and drive the policy.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgecloud.llm.perf_model import HardwareProfile, ModelProfile, PerfModel, StepShape


def largest(lo: int, hi: int, fits: Callable[[int], bool]) -> int:
    """The largest n in [lo, hi] with ``fits(n)``, for a ``fits`` true up to some n and false
    after (``lo`` when none fits beyond it): a binary search."""
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


class Roofline:
    """The decode-side questions of OOCO over one instance's ``PerfModel``."""

    def __init__(self, perf: PerfModel, max_batch: int = 4096) -> None:
        self.perf = perf
        self.max_batch = max_batch
        self._saturation: int | None = None
        self._steps: dict[tuple[int, int], float] = {}

    @property
    def ridge_point(self) -> float:
        """FLOPs per byte at which the achievable compute and memory rates meet."""
        hw = self.perf.hw
        return (hw.peak_flops * hw.matmul_efficiency) / (hw.memory_bandwidth * hw.memory_efficiency)

    def gemm_intensity(self, batch: int) -> float:
        """FLOPs per byte of one decoder layer's dense GEMMs with ``batch`` decode tokens (weights
        read once, activations in and out)."""
        m = self.perf.model
        shares = self.perf.parallel.devices
        flops = bytes_moved = 0.0
        matrices = [*m.attention_matrices, (m.hidden_size, 2 * m.intermediate_size), (m.intermediate_size,
                                                                                      m.hidden_size)]
        for rows, cols in matrices:
            cols_here = cols / shares
            flops += 2 * batch * rows * cols_here
            bytes_moved += rows * cols_here * m.weight_bytes_per_param + batch * (rows + cols_here) * m.act_bytes
        return flops / bytes_moved

    @property
    def linear_saturation_bs(self) -> int:
        """The smallest batch whose decode GEMMs are compute-bound (``max_batch`` if none is)."""
        if self._saturation is None:
            ridge = self.ridge_point
            lo, hi = 1, self.max_batch
            if self.gemm_intensity(hi) < ridge:
                self._saturation = hi
            else:
                while lo < hi:  # intensity grows with the batch
                    mid = (lo + hi) // 2
                    if self.gemm_intensity(mid) >= ridge:
                        hi = mid
                    else:
                        lo = mid + 1
                self._saturation = lo
        return self._saturation

    def decode_step_s(self, num_seqs: int, mean_context: float) -> float:
        """Predicted time of a step of ``num_seqs`` decodes of ``mean_context`` tokens each."""
        if num_seqs <= 0:
            return 0.0
        # Memoised on a coarse grid: routing asks this for every request it places.
        context = max(1, int(mean_context) // 16 * 16 + 16)
        key = (num_seqs, context)
        step = self._steps.get(key)
        if step is None:
            step = self._steps[key] = self.perf.step_time([StepShape(1, context)] * num_seqs)
        return step

    def prefill_chunk_within(self, limit_s: float, longest: int) -> int:
        """The largest prompt chunk (<= ``longest`` tokens, at least 1) whose prefill step the model
        prices within ``limit_s``: how much offline prefill a relaxed instance may put in one step
        when an online prompt arriving during it may wait that long."""
        return largest(1, max(1, longest), lambda n: self.perf.step_time([StepShape(n, n)]) <= limit_s)

    def prefill_tokens_within(self, limit_s: float, step_tokens: int = 8192) -> int:
        """Prompt tokens an instance prefills in ``limit_s`` in steps of ``step_tokens`` (each
        priced as one prompt of that length: its attention overstated for shorter prompts)."""
        step = self.perf.step_time([StepShape(step_tokens, step_tokens)])
        return int(limit_s / step * step_tokens)

    def fits(self, num_seqs: int, total_context: float, length: int, limit_s: float) -> bool:
        """Whether one more decode of ``length`` context tokens keeps the step under ``limit_s``."""
        return self.decode_step_s(num_seqs + 1, (total_context + length) / (num_seqs + 1)) <= limit_s

    def preferred_length(self, num_seqs: int, total_context: float, limit_s: float, longest: int) -> int:
        """The longest context (<= ``longest``) one more decode may have so that a step of the
        ``num_seqs`` running decodes (``total_context`` tokens in all) plus it stays under
        ``limit_s``; 0 when even a one-token context does not fit."""

        def fits(length: int) -> bool:
            return self.fits(num_seqs, total_context, length, limit_s)

        return largest(1, max(1, longest), fits) if fits(1) else 0


class FlexStepBudget:
    """OOCO's strict-pool step rule as an engine hook (``Scheduler.flex_step_budget``): once a
    step's online work is planned, how many ``flex`` tokens it may still carry so that the step,
    priced by the roofline model, stays within ``limit_s`` (a share of the TPOT SLO). The running
    offline decodes come first (one token each, their contexts read); what time is left goes to
    one offline prefill chunk, the largest that fits. A step with no online work always gets at
    least one token, so offline work never stalls on an idle instance.

    The step's dense parts depend only on its token count, attention and per-sequence overheads
    add up per request: a step is priced once, and each candidate chunk by its increment."""

    def __init__(self, perf: PerfModel, limit_s: float, grid: int = 16) -> None:
        if not limit_s > 0:
            raise ValueError(f"limit_s must be > 0, got {limit_s}")
        self.perf = perf
        self.limit_s = limit_s
        self.grid = grid
        self._dense: dict[int, float] = {}
        self._chunk: dict[int, float] = {}

    def _dense_s(self, tokens: int) -> float:
        """Layers (and their collectives) of a step of ``tokens`` tokens, on a grid."""
        key = -(-tokens // self.grid) * self.grid
        cost = self._dense.get(key)
        if cost is None:
            part = self.perf.step_cost([StepShape(key, key, False)])
            cost = self._dense[key] = part.layers + part.experts + part.network
        return cost

    def _chunk_s(self, tokens: int) -> float:
        """Attention and per-sequence overhead of a fresh prompt chunk of ``tokens``."""
        cost = self._chunk.get(tokens)
        if cost is None:
            cost = self._chunk[tokens] = (self.perf.step_cost([StepShape(tokens, tokens, False)]).attention
                                          + self.perf.hw.seq_overhead_s)
        return cost

    def __call__(self, scheduler: Any, plan: Any) -> int:
        shapes = [StepShape(s.num_new_tokens, s.request.num_computed_tokens + s.num_new_tokens)
                  for s in plan.scheduled]
        decodes = [r for r in scheduler.running
                   if r.service_tier == "flex" and r.num_tokens - r.num_computed_tokens == 1]
        shapes += [StepShape(1, r.num_tokens) for r in decodes]
        if not shapes:
            base_tokens, base = 0, self.perf.hw.step_overhead_s
        else:
            cost = self.perf.step_cost(shapes)
            base_tokens = sum(s.num_new_tokens for s in shapes)
            base = cost.total
        if base > self.limit_s:
            return 0 if plan.scheduled else max(1, len(decodes))
        dense0 = self._dense_s(base_tokens) if base_tokens else 0.0

        def fits(chunk: int) -> bool:
            return base + self._dense_s(base_tokens + chunk) - dense0 + self._chunk_s(chunk) <= self.limit_s

        lo = largest(0, scheduler.max_num_batched_tokens, fits)
        lo = lo // self.grid * self.grid if lo >= self.grid else lo
        return max(len(decodes) + lo, 0 if plan.scheduled else 1)


def perf_model_from_files(hardware: str | Path, model_config: str | Path, weight_bytes: float = 4.0) -> PerfModel:
    """A ``PerfModel`` from a profile that ``edgecloud sim calibrate`` wrote (its ``hardware``
    table) and a model's HF ``config.json`` (or its directory): how a real cluster's router gets
    the same model the simulator prices steps with."""
    from edgecloud.llm.config import ModelConfig

    path = Path(hardware).expanduser()
    try:
        raw = json.loads(path.read_text())
        profile = HardwareProfile(**raw["hardware"])
    except FileNotFoundError:
        raise ValueError(f"hardware: no such profile file {str(path)!r} (write one with `edgecloud sim "
                         "calibrate`)") from None
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(f"hardware: {path} is not a profile from `edgecloud sim calibrate` ({error})") from None
    config = Path(model_config).expanduser()
    if config.is_dir():
        config = config / "config.json"
    if not config.is_file():
        raise ValueError(f"model: no config.json at {str(config)!r}")
    return PerfModel(profile, ModelProfile.from_config(ModelConfig.from_file(config), weight_bytes))
