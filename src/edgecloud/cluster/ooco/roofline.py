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
from pathlib import Path

from edgecloud.llm.perf_model import HardwareProfile, ModelProfile, PerfModel, StepShape


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
        lo, hi = 1, max(1, longest)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.perf.step_time([StepShape(mid, mid)]) <= limit_s:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def fits(self, num_seqs: int, total_context: float, length: int, limit_s: float) -> bool:
        """Whether one more decode of ``length`` context tokens keeps the step under ``limit_s``."""
        return self.decode_step_s(num_seqs + 1, (total_context + length) / (num_seqs + 1)) <= limit_s

    def preferred_length(self, num_seqs: int, total_context: float, limit_s: float, longest: int) -> int:
        """The longest context (<= ``longest``) one more decode may have so that a step of the
        ``num_seqs`` running decodes (``total_context`` tokens in all) plus it stays under
        ``limit_s``; 0 when even a one-token context does not fit."""

        def fits(length: int) -> bool:
            return self.fits(num_seqs, total_context, length, limit_s)

        if not fits(1):
            return 0
        lo, hi = 1, max(1, longest)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if fits(mid):
                lo = mid
            else:
                hi = mid - 1
        return lo


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
