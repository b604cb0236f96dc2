"""``edgecloud sim calibrate``: fit the cost model's factors to the engine on this machine.

The engine runs in this process (its own scheduler, KV manager and model runner) through a sweep
of step shapes: prefills of several lengths, decode batches of several sizes and contexts, and
mixes of both; every step is timed. The machine's peaks are measured (``measure_peaks``: a
streaming copy and a square matmul on the engine's thread count), and the factors of the
``HardwareProfile`` are fitted by least squares on the log of predicted / measured step time:
matmul and memory efficiency, a per-step overhead and a per-sequence overhead (on a CPU and a
small model the host's work per step and per request is much of a step). The result, with the
fit's error, goes to a JSON file that ``sim run``, ``sim validate`` and ``bench cluster`` take as
``--hardware``.

The engine takes two paths through a step: one sequence decoding one token runs all its layers and
the LM head in one C call (``llm/quant/decode_stack.py``), every other step runs the model's
modules. Their costs differ far more than one set of factors can say (on this machine's small
model the one-call step is ~1/4 of the batched model's price), so one-sequence decode steps are
profiled over their context and fitted apart (``fit_two_paths``; ``profiles.LoneDecodePerfModel``
prices each step by its path).

The serving path around the engine is measured too, on a real cluster of ``instances`` instances
(the layout the profile is for: instances, router and client share this machine's cores): what a
client waits for beyond the engine's first step (split evenly into ``frontend_s``, before the
engine, and ``delivery_s``, after it); the served probe (``measure_served_steps``: a synthetic
workload served with every core logging its steps), whose measured over in-process-fitted step
time per path scales that path's factors, and whose core loop between steps (``serving_step_s``) is
added to every step; and the KV bandwidth of the cluster's ``zmq`` connector between two real
instances (``transfer_bandwidth``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import time
from dataclasses import dataclass, field

import numpy as np

from edgecloud.llm.config import EngineConfig
from edgecloud.llm.engine_core import EngineCore
from edgecloud.llm.model_source import resolve_model
from edgecloud.llm.perf_model import HardwareProfile, ModelProfile, PerfModel, StepShape
from edgecloud.llm.request import EngineCoreRequest
from edgecloud.llm.sampling_params import SamplingParams
from edgecloud.llm.scheduler import SchedulerOutput
from edgecloud.sim.profiles import BATCHED_PATH, LONE_PATH, CalibratedProfile, is_lone_decode

FITTED = ("matmul_efficiency", "memory_efficiency", "step_overhead_s", "seq_overhead_s")
FITTED_LONE = ("memory_efficiency", "step_overhead_s")  # one-sequence decode steps (``fit_two_paths``)
# factor -> (start from the measured step times, lower bound, upper bound, scale)
FACTORS = {
    "matmul_efficiency": (lambda t: 0.3, 1e-4, 1.0, 0.1),
    "memory_efficiency": (lambda t: 0.3, 1e-4, 1.0, 0.1),
    "step_overhead_s": (lambda t: float(np.min(t)) / 2, 0.0, 1.0, 1e-3),
    "seq_overhead_s": (lambda t: 1e-5, 0.0, 0.1, 1e-5),
}


@dataclass
class StepSample:
    shapes: list[StepShape]
    seconds: float


def local_model_profile(core: EngineCore) -> ModelProfile:
    element = {"float32": 4, "bfloat16": 2, "float16": 2}[core.info.dtype]
    return ModelProfile.from_config(core.model_config, element)


def profile_steps(core: EngineCore, seed: int = 0, repeats: int = 3, budget_s: float = 60.0) -> list[StepSample]:
    """Times the engine's steps over a sweep of shapes (prefills, decode batches, mixes)."""
    rng = random.Random(seed)
    vocab = core.model_config.vocab_size
    limit = core.max_model_len
    seen: list[list[StepShape]] = []
    core.on_step = lambda plan: seen.append(_shapes(plan))
    samples: list[StepSample] = []
    deadline = time.monotonic() + budget_s
    ids = iter(range(10**9))

    def prompt(n: int) -> list[int]:
        return [rng.randrange(2, vocab) for _ in range(n)]

    def add(n: int, out: int) -> str:
        request_id = f"cal-{next(ids)}"
        core.add_request(EngineCoreRequest(
            request_id=request_id, prompt_token_ids=prompt(n), arrival_time=time.monotonic(),
            params=SamplingParams(temperature=0.0, max_tokens=out, ignore_eos=True)))
        return request_id

    def timed_step() -> None:
        seen.clear()
        start = time.perf_counter()
        core.step()
        elapsed = time.perf_counter() - start
        if seen and seen[0]:
            samples.append(StepSample(seen[0], elapsed))

    def drain() -> None:
        core.abort_requests(list(core.scheduler.requests))
        core.control("reset_prefix_cache", {})

    lengths = [n for n in (4, 16, 48, 96, 160, 256, 400, 640, 1000) if n < limit - 8]
    for _ in range(repeats):  # one sequence decoding (the engine's one-call path) over its context
        for context in [c for c in (8, 32, 64, 128, 256, 384, 512, 768, 1000) if c < limit - 16]:
            add(context, 8)
            core.step()  # the prefill
            for _ in range(6):
                timed_step()
            drain()
    batches = (1, 2, 4, 8, 16, 32, 64)
    contexts = [c for c in (16, 96, 256, 480) if c < limit - 16]
    for _ in range(repeats):
        for n in lengths:  # prefill alone
            add(n, 1)
            timed_step()
            drain()
        for b in batches:  # decodes alone, then beside a prefill chunk
            for context in contexts:
                if time.monotonic() > deadline:
                    break
                for _ in range(b):
                    add(context, 64)
                while any(r.num_computed_tokens < r.num_prompt_tokens for r in core.scheduler.running) or \
                        core.scheduler.waiting:
                    core.step()
                for _ in range(2):
                    timed_step()
                n = rng.choice(lengths)
                add(n, 1)
                timed_step()
                drain()
    core.on_step = None
    return median_per_shape(samples)


def median_per_shape(samples: list[StepSample]) -> list[StepSample]:
    """One sample per distinct step shape, at the median of its repeats: a step that another
    process slowed down once does not pull the fit."""
    groups: dict[tuple[StepShape, ...], list[float]] = {}
    for sample in samples:
        groups.setdefault(tuple(sample.shapes), []).append(sample.seconds)
    return [StepSample(list(shapes), float(np.median(times))) for shapes, times in groups.items()]


def _shapes(plan: SchedulerOutput) -> list[StepShape]:
    return [StepShape(s.num_new_tokens, s.request.num_computed_tokens + s.num_new_tokens, s.samples)
            for s in plan.scheduled]


def step_class(shapes: list[StepShape]) -> str:
    """The profile's step classes: ``lone decode`` (one sequence, one token: the one-call decoder),
    ``decode`` (a batch of decodes), ``prefill`` (prefill chunks only), ``mixed``."""
    if is_lone_decode(shapes):
        return "lone decode"
    decoding = [s.num_new_tokens == 1 and s.context_len > 1 for s in shapes]
    if all(decoding):
        return "decode"
    return "mixed" if any(decoding) else "prefill"


@dataclass
class Fit:
    hardware: HardwareProfile  # every step but one-sequence decodes
    lone_decode: HardwareProfile | None  # one-sequence decode steps (None: no such steps profiled)
    errors: np.ndarray  # predicted / measured - 1 of each sample, in the samples' order
    classes: list[str]  # each sample's step class

    def errors_by_class(self) -> dict[str, list[float]]:
        out = {}
        for name in sorted(set(self.classes)):
            errors = np.abs(self.errors[[c == name for c in self.classes]])
            out[name] = [float(np.median(errors)), float(np.percentile(errors, 90)), float(len(errors))]
        return out


def fit_two_paths(base: HardwareProfile, model: ModelProfile, samples: list[StepSample]) -> Fit:
    """The engine's two step paths fitted apart: ``FITTED`` over every step that runs the modules,
    then memory efficiency and step overhead over the one-sequence decode steps alone (the one-call
    decoder: weights streamed once, its host work per step), starting from the first fit."""
    lone = [is_lone_decode(s.shapes) for s in samples]
    batched = [s for s, one in zip(samples, lone, strict=True) if not one]
    hardware, batched_errors = fit_factors(base, model, batched or samples)
    errors = np.zeros(len(samples))
    errors[[not one for one in lone]] = batched_errors
    lone_samples = [s for s, one in zip(samples, lone, strict=True) if one]
    lone_hw = None
    if len(lone_samples) >= 3:
        lone_hw, lone_errors = fit_factors(hardware, model, lone_samples, FITTED_LONE)
        errors[lone] = lone_errors
    elif lone_samples:
        errors[lone] = [PerfModel(hardware, model).step_time(s.shapes) / s.seconds - 1 for s in lone_samples]
    return Fit(hardware, lone_hw, errors, [step_class(s.shapes) for s in samples])


def fit_factors(base: HardwareProfile, model: ModelProfile, samples: list[StepSample],
                fitted: tuple[str, ...] = FITTED) -> tuple[HardwareProfile, np.ndarray]:
    """Least squares on log(predicted / measured) over the ``fitted`` factors; returns the fitted
    hardware and the relative errors (predicted / measured − 1) of every sample."""
    from scipy.optimize import least_squares

    measured = np.array([s.seconds for s in samples])

    def hardware(x: np.ndarray) -> HardwareProfile:
        return base.calibrated(**dict(zip(fitted, (float(v) for v in x), strict=True)))

    def residuals(x: np.ndarray) -> np.ndarray:
        perf = PerfModel(hardware(x), model)
        predicted = np.array([perf.step_time(s.shapes) for s in samples])
        return np.log(predicted / measured)

    start = np.array([FACTORS[f][0](measured) for f in fitted])
    lower = np.array([FACTORS[f][1] for f in fitted])
    upper = np.array([FACTORS[f][2] for f in fitted])
    solution = least_squares(residuals, start, bounds=(lower, upper), x_scale=np.array([FACTORS[f][3] for f in fitted]))
    return hardware(solution.x), np.exp(residuals(solution.x)) - 1.0


def measure_hardware(threads: int, dtype: str) -> HardwareProfile:
    import torch

    from edgecloud.llm.benchmark import measure_peaks

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        peaks = measure_peaks(getattr(torch, dtype))
    finally:
        torch.set_num_threads(previous)
    return HardwareProfile(f"this machine ({_cpu_name()}, {threads} thread{'s' if threads > 1 else ''})",
                           peaks.matmul_gflop_s * 1e9, peaks.memory_gb_s * 1e9)


def _cpu_name() -> str:
    from edgecloud.bench.machine import cpu_model

    return cpu_model()


async def measure_transfer(config: EngineConfig, blocks: int = 24, repeats: int = 5) -> float:
    """KV bytes per second of the cluster's ``zmq`` connector between two real instances (engine
    cores in processes of their own): prefill on one with export, hand the blocks to the other."""
    from edgecloud.cluster.config import instances_from_flags
    from edgecloud.cluster.connectors import ZMQConnector
    from edgecloud.cluster.instance import Instance
    from edgecloud.llm.outputs import OutputKind
    from edgecloud.llm.request import KVTransferParams

    src, dst = (Instance(spec) for spec in instances_from_flags(config, 2))
    await asyncio.gather(src.start(), dst.start())
    try:
        rng = random.Random(1)
        length = min(blocks * config.block_size + 1, src.info.max_model_len - 2)
        prompt = [rng.randrange(2, src.info.vocab_size) for _ in range(length)]
        one = SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True)
        bandwidths = []
        for i in range(repeats):
            prompt[0] = 2 + i  # a new chain each time: nothing of it is cached at the receiver
            outs = [o async for o in src.engine.generate(prompt, one, f"cal-x{i}", output_kind=OutputKind.FINAL_ONLY,
                                                         kv_transfer=KVTransferParams(export=True))]
            keys = outs[-1].kv_block_keys or []
            result = await ZMQConnector().transfer(src, dst, keys, 0)
            await src.engine.control("unpin", keys=keys)
            bandwidths.append(result.bandwidth)
        return float(np.median(bandwidths))
    finally:
        await asyncio.gather(src.shutdown(), dst.shutdown())


def measure_http_overhead(config: EngineConfig, core: EngineCore, requests: int = 40,
                          seed: int = 0, instances: int = 1) -> float:
    """What a client waits for beyond the engine's first step (HTTP both ways, the router's
    tokenizing, routing and streaming, the hops to and from the core): for ``requests`` prompts,
    the client's TTFT on an idle cluster of ``instances`` instances less the same prompt's prefill
    step timed on ``core`` (an engine with the same options in this process); the median of the
    differences."""
    from edgecloud.bench.workload import PromptVocab
    from edgecloud.sim.real import RealCluster, engine_args, replay

    source = resolve_model(config.model)
    vocab = PromptVocab.from_dir(source.directory)
    rng = np.random.default_rng(seed)
    lengths = [int(n) for n in rng.integers(8, min(256, core.max_model_len - 8), requests)]
    bench = [vocab.request(vocab.sample(rng, n), 2) for n in lengths]
    steps = []
    for i, request in enumerate(bench):
        core.add_request(EngineCoreRequest(
            request_id=f"overhead-{i}", prompt_token_ids=list(request.prompt_ids), arrival_time=time.monotonic(),
            params=SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True)))
        start = time.perf_counter()
        core.step()
        steps.append(time.perf_counter() - start)
        core.abort_requests(list(core.scheduler.requests))
        core.control("reset_prefix_cache", {})
    gaps = []
    with RealCluster(["--instances", str(instances), "--policy", "round-robin", *engine_args(config)]) as cluster:
        name = cluster.get_json("/v1/models")["data"][0]["id"]
        replay(cluster, name, bench[:5], [0.0] * 5)  # warm-up
        for request, step in zip(bench, steps, strict=True):
            record = replay(cluster, name, [request], [0.0])[0]
            if record.ok and record.ttft is not None:
                gaps.append(record.ttft - step)
    return max(0.0, float(np.median(gaps)))


@dataclass
class ServedSteps:
    """The served probe's steps against the in-process fit: per path, measured seconds over modelled
    seconds summed over the path's steps (the host shared by the instances, router and client slows
    steps, and unevenly: latencies add steps up, so their mean is what counts), and the core's mean
    time between a step and the next one that continues its work (its loop, the output hop)."""

    lone_factor: float
    batched_factor: float
    loop_s: float
    num_steps: int
    noise: dict[str, list[float]] = field(default_factory=dict)  # path -> quantiles of measured / factor x price


def probe_workload(vocab: object, max_len: int, seed: int, rates: tuple[float, ...] = (2.0, 4.0, 8.0),
                   per_rate: int = 40) -> tuple[list, list[float]]:
    """Synthetic requests for the served probe (not a trace): prompts of 8-300 tokens, answers of
    4-64, Poisson arrivals at each of ``rates`` requests/s in turn."""
    rng = np.random.default_rng(seed + 1)
    requests, arrivals, at = [], [], 0.0
    for rate in rates:
        for _ in range(per_rate):
            at += float(rng.exponential(1 / rate))
            prompt = int(rng.integers(8, min(300, max_len - 70)))
            requests.append(vocab.request(vocab.sample(rng, prompt), int(rng.integers(4, 65))))  # type: ignore[attr-defined]
            arrivals.append(at)
    return requests, arrivals


def continuing_gaps(steps: list[dict]) -> list[tuple[int, float]]:
    """(index, seconds) from each logged step to the next one that continues one of its requests (a
    shape whose context before it equals a context this step reached): the core had work waiting, so
    the time between is its loop's, not idleness."""
    out = []
    for i in range(len(steps) - 1):
        reached = {context for _, context, _, _ in steps[i]["shapes"]}
        if any(context - new in reached for new, context, _, _ in steps[i + 1]["shapes"]):
            out.append((i, steps[i + 1]["start"] - steps[i]["start"] - steps[i]["s"]))
    return out


def measure_served_steps(config: EngineConfig, hardware: HardwareProfile, lone: HardwareProfile | None,
                         model: ModelProfile, max_len: int, instances: int, seed: int = 0) -> ServedSteps:
    """Serves the probe workload on a real cluster of ``instances`` instances with every core logging
    its steps (``EDGECLOUD_STEP_LOG``) and sets the logged steps against the in-process fit."""
    import tempfile

    from edgecloud.bench.workload import PromptVocab
    from edgecloud.sim.profiles import LoneDecodePerfModel
    from edgecloud.sim.real import RealCluster, engine_args, replay
    from edgecloud.sim.validate import read_step_log, step_logging

    vocab = PromptVocab.from_dir(resolve_model(config.model).directory)
    requests, arrivals = probe_workload(vocab, max_len, seed)
    with tempfile.TemporaryDirectory(prefix="edgecloud-probe-") as directory:
        with step_logging(directory), RealCluster(
                ["--instances", str(instances), "--policy", "round-robin", *engine_args(config)]) as c:
            replay(c, c.get_json("/v1/models")["data"][0]["id"], requests, arrivals)
        cores = read_step_log(directory)
    return served_factors(cores, LoneDecodePerfModel(hardware, model, lone) if lone else PerfModel(hardware, model))


def served_factors(cores: list[list[dict]], perf: PerfModel) -> ServedSteps:
    from edgecloud.sim.validate import logged_shapes

    pairs: dict[bool, list[tuple[float, float]]] = {True: [], False: []}  # lone path? -> (measured, modelled)
    gaps = []
    for steps in cores:
        for step in steps:
            shapes = logged_shapes(step)
            pairs[is_lone_decode(shapes)].append((step["s"], perf.step_time(shapes)))
        gaps += [gap for _, gap in continuing_gaps(steps)]

    def factor(lone: bool) -> float:
        measured, modelled = (sum(p) for p in zip(*pairs[lone], strict=True)) if pairs[lone] else (1.0, 1.0)
        return measured / modelled if modelled > 0 else 1.0

    def spread(lone: bool) -> list[float]:
        """Quantiles of measured / (factor x modelled): what multiplies a step's mean price."""
        if not pairs[lone]:
            return [1.0]
        ratios = np.array([m / p for m, p in pairs[lone]]) / factor(lone)
        weights = np.array([p for _, p in pairs[lone]])  # the price-weighted mean of the ratios is 1
        ratios = ratios / (np.sum(ratios * weights) / np.sum(weights))
        return [float(q) for q in np.quantile(ratios, (np.arange(100) + 0.5) / 100)]

    return ServedSteps(factor(True), factor(False), float(np.mean(gaps)) if gaps else 0.0,
                       len(pairs[True]) + len(pairs[False]), {LONE_PATH: spread(True), BATCHED_PATH: spread(False)})


def slowed(hardware: HardwareProfile, factor: float, loop_s: float) -> HardwareProfile:
    """``hardware`` with every step ``factor`` times as long (peaks divided, overheads multiplied),
    plus ``loop_s`` a step."""
    return hardware.calibrated(
        peak_flops=hardware.peak_flops / factor, memory_bandwidth=hardware.memory_bandwidth / factor,
        step_overhead_s=hardware.step_overhead_s * factor + loop_s,
        layer_overhead_s=hardware.layer_overhead_s * factor, seq_overhead_s=hardware.seq_overhead_s * factor)


def calibrate(config: EngineConfig, seed: int = 0, repeats: int = 3, serving_path: bool = True,
              budget_s: float = 120.0, instances: int = 2) -> CalibratedProfile:
    """Profiles the engine with ``config`` on this machine and fits the factors (see the module);
    the serving path is measured on a cluster of ``instances`` instances (the layout the profile is
    for: they share this machine's cores)."""
    from edgecloud.bench.machine import cpu_model

    threads = config.num_threads or 1
    load_start = os.getloadavg()[0]
    source = resolve_model(config.model)
    core = EngineCore(config, source)
    base = measure_hardware(threads, core.info.dtype)
    model = local_model_profile(core)
    samples = profile_steps(core, seed, repeats, budget_s)
    fit = fit_two_paths(base, model, samples)
    hardware, lone, errors = fit.hardware, fit.lone_decode, fit.errors
    frontend = delivery = bandwidth = serving_step = 0.0
    served = None
    if serving_path:
        bandwidth = asyncio.run(measure_transfer(config))
        overhead = measure_http_overhead(config, core, seed=seed, instances=instances)
        # Half on the way in (HTTP, tokenizing, routing, the hop to the core), half on the way out
        # (the hop back, detokenizing, the SSE chunk): the client sees their sum.
        frontend = delivery = overhead / 2
        served = measure_served_steps(config, hardware, lone, model, core.max_model_len, instances, seed)
        serving_step = served.loop_s
        hardware = slowed(hardware, served.batched_factor, serving_step)
        if lone is not None:
            lone = slowed(lone, served.lone_factor, serving_step)
    abs_errors = np.abs(errors)
    return CalibratedProfile(
        hardware=hardware, model=source.name, threads=threads, dtype=core.info.dtype,
        fit_median_abs_error=float(np.median(abs_errors)), fit_p90_abs_error=float(np.percentile(abs_errors, 90)),
        num_steps=len(samples), transfer_bandwidth=bandwidth, frontend_s=frontend, delivery_s=delivery,
        serving_step_s=serving_step, lone_decode=lone, fit_errors=fit.errors_by_class(),
        serving_instances=instances if serving_path else 0,
        served_factors=None if served is None else {LONE_PATH: served.lone_factor,
                                                    BATCHED_PATH: served.batched_factor, "steps": served.num_steps},
        step_noise=None if served is None or lone is None else served.noise,
        engine=dataclasses.asdict(config), cpu=cpu_model(), load_average=(load_start, os.getloadavg()[0]),
    )


def describe(profile: CalibratedProfile) -> str:
    hw = profile.hardware
    parts = [
        f"{hw.name}: peak {hw.peak_flops / 1e9:.1f} GFLOP/s, memory {hw.memory_bandwidth / 1e9:.1f} GB/s",
        f"fitted on {profile.num_steps} steps of {profile.model} ({profile.dtype}): matmul efficiency "
        f"{hw.matmul_efficiency:.3f}, memory efficiency {hw.memory_efficiency:.3f}, step overhead "
        f"{hw.step_overhead_s * 1e3:.2f} ms, per-sequence overhead {hw.seq_overhead_s * 1e6:.1f} µs",
        f"step time error |predicted/measured - 1|: median {profile.fit_median_abs_error:.1%}, "
        f"p90 {profile.fit_p90_abs_error:.1%}",
    ]
    if profile.lone_decode is not None:
        lone = profile.lone_decode
        parts.append(f"one-sequence decode steps (one-call decoder) fitted apart: memory efficiency "
                     f"{lone.memory_efficiency:.3f}, step overhead {lone.step_overhead_s * 1e3:.2f} ms")
    if profile.fit_errors:
        parts.append("by step class (median, p90, steps): " + ", ".join(
            f"{name} {e[0]:.1%} {e[1]:.1%} {int(e[2])}" for name, e in profile.fit_errors.items()))
    if profile.served_factors:
        f = profile.served_factors
        parts.append(f"served probe ({int(f['steps'])} steps on {profile.serving_instances} instances): steps "
                     f"x{f['lone decode']:.3f} (one-sequence decodes), x{f['batched']:.3f} (others) of the in-process "
                     "fit")
    if profile.step_noise:
        parts.append("served steps' spread (p10-p90 of measured over mean price): " + ", ".join(
            f"{path} {q[10]:.2f}-{q[89]:.2f}" for path, q in profile.step_noise.items()))
    if profile.transfer_bandwidth:
        parts.append(f"serving path ({profile.serving_instances} instances) {2 * profile.frontend_s * 1e3:.2f} ms "
                     f"a request, {profile.serving_step_s * 1e3:.2f} ms a step; zmq KV transfer "
                     f"{profile.transfer_bandwidth / 1e6:.0f} MB/s")
    return "; ".join(parts)
