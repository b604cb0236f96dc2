"""``make bench-quick`` for the systems whose benchmark had no test: each runs the system's documented
benchmark command (``edgecloud ...``, in this process) with small options, asserts only that the run
is complete (every case, every policy, nothing lost; never a timing or a goal), prints its headline
figure as one ``HEADLINE`` line and writes the command's JSON (and plot) under
``$EDGECLOUD_BENCH_OUT/<system>/`` plus ``headline.json`` beside it.

Small options make these figures *quick* figures: where one differs from the documented run (fewer
requests, shorter runs, a tiny model), the test's docstring and the printed line say how, and the
documented figure stays the one in README.md and docs/. Simulated results are printed and written as
SIMULATED. Every test here is marked ``bench`` and ``bench_quick`` (never run by ``make test``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from edgecloud.cli import main
from tests.edge.cluster import DEMO_TEMPLATE

TRACES = Path(__file__).resolve().parents[1].parent / "shared" / "traces"  # ../shared/traces, as the CLIs default
MOONCAKE = TRACES / "mooncake_conversation.jsonl"
AZURE_CONV = TRACES / "azure_llm_2023_conv.csv"
AZURE_CODE = TRACES / "azure_llm_2023_code.csv"

pytestmark = [pytest.mark.bench, pytest.mark.bench_quick]


def needs(*traces: Path) -> pytest.MarkDecorator:
    missing = [str(t) for t in traces if not t.is_file()]
    return pytest.mark.skipif(bool(missing), reason=f"shared trace not on this machine: {', '.join(missing)}")


def run(args: Sequence[str]) -> None:
    """The documented command, as a user types it after ``edgecloud``."""
    assert main([str(a) for a in args]) == 0, f"edgecloud {' '.join(map(str, args))} failed"


def out_dir(bench_out: Path, system: str) -> Path:
    path = bench_out / system
    path.mkdir(parents=True, exist_ok=True)
    return path


def headline(out: Path, system: str, text: str, figures: dict[str, Any], command: Sequence[str],
             simulated: bool, config: str) -> None:
    """Print the headline and write it as ``headline.json`` beside the command's own JSON."""
    tag = "SIMULATED " if simulated else ""
    line = f"HEADLINE {system}: {tag}{text} [quick config: {config}]"
    print(line)
    (out / "headline.json").write_text(json.dumps({
        "system": system, "headline": line, "simulated": simulated, "figures": figures,
        "command": "edgecloud " + " ".join(map(str, command)), "quick_config": config,
    }, indent=2) + "\n")


def test_engine_against_transformers(bench_out: Path) -> None:
    """LLM engine: `edgecloud bench engine` on SmolLM2-135M (the shipped GGUF), 16 prompts instead of
    the documented 64 (batch 16, shorter lengths)."""
    from edgecloud.llm.gguf import default_model_path

    out = out_dir(bench_out, "engine")
    args = ["bench", "engine", "--model", default_model_path(), "--num-prompts", "16", "--input-len", "32:128",
            "--output-len", "16:64", "--batch-size", "16", "--threads", "2", "--json", out / "bench_engine.json"]
    run(args)
    result = json.loads((out / "bench_engine.json").read_text())
    for field in ("engine_tok_s", "hf_tok_s", "speedup", "roofline_tok_s", "roofline_fraction"):
        assert result[field] > 0, field
    assert result["num_prompts"] == 16 and result["output_tokens"] > 0
    headline(out, "engine", f"{result['speedup']:.2f}x transformers generate, "
             f"{result['roofline_fraction']:.2f} of the roofline ({result['engine_tok_s']:.0f} tok/s)",
             {k: result[k] for k in ("speedup", "roofline_fraction", "engine_tok_s", "hf_tok_s")}, args, False,
             "16 prompts, input 32-128, output 16-64 tokens, batch 16, 2 threads")


def test_omniattn_kv_held_while_decoding(bench_out: Path, tmp_path: Path) -> None:
    """OmniAttn: `edgecloud bench omniattn --parts speed --speed-kv random` at 8k tokens on SmolLM2,
    4 decode steps. The KV a decoding request holds is block accounting, the same for any 16 of the
    30 layers, so a random 16-layer pattern (sink 8 + window 24 blocks, the documented shape) stands
    in for the searched one (`omniattn search` takes longer than this whole target)."""
    from edgecloud.llm.omniattn.pattern import LayerPattern

    out = out_dir(bench_out, "omniattn")
    pattern = tmp_path / "pattern.json"
    LayerPattern.random(30, 16, 0, sink_blocks=8, window_blocks=24, block_size=16).save(pattern)
    args = ["bench", "omniattn", "--pattern", pattern, "--parts", "speed", "--speed-kv", "random",
            "--contexts", "8192", "--steps", "4", "--threads", "2", "--json", out / "omniattn.json",
            "--plot", out / "omniattn.png"]
    run(args)
    cases = {c["method"]: c for c in json.loads((out / "omniattn.json").read_text())["cases"]}
    assert set(cases) == {"full", "omniattn", "streaming"}
    assert all(c["steps"] == 4 and c["step_ms"] > 0 for c in cases.values())
    fraction = cases["omniattn"]["kv_bytes_per_token"] / cases["full"]["kv_bytes_per_token"]
    headline(out, "omniattn", f"KV held while decoding at 8k tokens: {fraction:.3f} of full KV "
             f"(16 of 30 layers sink + window); decode step {cases['omniattn']['step_ms']:.0f} ms vs full "
             f"{cases['full']['step_ms']:.0f} ms",
             {"kv_fraction_8k": fraction, "step_ms": {m: c["step_ms"] for m, c in cases.items()}}, args, False,
             "speed part only, random KV, context 8192, 4 decode steps; a random 16-layer pattern")


@needs(MOONCAKE)
def test_omniproxy_simulated(bench_out: Path) -> None:
    """OmniProxy: `edgecloud bench omniproxy --no-real` on 16P+16D H100 (SIMULATED), the trace's first
    60 requests at 8x their rate instead of the documented 150; round-robin, prefix-aware, omniproxy."""
    out = out_dir(bench_out, "omniproxy")
    args = ["bench", "omniproxy", "--no-real", "--trace", MOONCAKE, "--sim-clusters", "h100:llama-3-8b:1:16:16:8",
            "--sim-num-requests", "60", "--policies", "round-robin,prefix-aware,omniproxy",
            "--json", out / "omniproxy.json", "--plot", out / "omniproxy.png"]
    run(args)
    result = json.loads((out / "omniproxy.json").read_text())
    cases = {c["policy"]: c for c in result["cases"]}
    assert set(cases) == {"round-robin", "prefix-aware", "omniproxy"}
    assert all(c["simulated"] and c["completed"] == c["requests"] == 480 and c["failed"] == 0
               for c in cases.values())
    ratio = next(c["ttft_p99"] for c in result["comparisons"]
                 if c["policy"] == "omniproxy" and c["against"] == "round-robin")
    headline(out, "omniproxy", f"16P+16D H100, TTFT p99 x{ratio['ratio']:.3f} [{ratio['low']:.3f}, "
             f"{ratio['high']:.3f}] of round-robin", {"ttft_p99_vs_round_robin": ratio}, args, True,
             "first 60 Mooncake requests x8 rate (480), 3 policies")


def test_moe_placement_on_recorded_routing(bench_out: Path) -> None:
    """MoE: `edgecloud bench moe` records the shipped 16-expert MoE's routing on held-out prose and
    code (8 prompts per workload instead of 24, 16 tokens instead of 32) and replays it through each
    placement at EP=4."""
    out = out_dir(bench_out, "moe")
    args = ["bench", "moe", "--ranks", "4", "--prompts", "8", "--max-tokens", "16", "--threads", "2",
            "--json", out / "moe.json", "--plot", out / "moe.png"]
    run(args)
    report = json.loads((out / "moe.json").read_text())
    trace = [c for c in report["cases"] if c["mode"] == "trace" and c["ep"] == 4]
    worst = {c["policy"]: c["max_mean_load"] for c in trace if c["phase"] == "prose"}
    assert {"static", "eplb", "omni"} <= set(worst), sorted(worst)
    assert all(v >= 1.0 for v in worst.values())
    text = ", ".join(f"{p} {v:.2f}" for p, v in sorted(worst.items()))
    headline(out, "moe", f"EP=4 worst-layer max/mean expert load on recorded routing (prose): {text}",
             {"max_mean_load_prose_ep4": worst}, args, False, "8 prompts per workload, 16 tokens, EP=4 only")


def test_moe_sim_deepseek_decode(bench_out: Path) -> None:
    """MoE at scale: `edgecloud bench moe-sim` (SIMULATED DeepSeek-V3 decode on 64 H100), the
    documented command unchanged."""
    out = out_dir(bench_out, "moe-sim")
    args = ["bench", "moe-sim", "--setups", "h100:64", "--zipf", "0.35", "--batch-per-device", "32",
            "--layers", "4", "--output-len", "32", "--shift-at", "0.5", "--json", out / "moe_sim.json",
            "--plot", out / "moe_sim.png"]
    run(args)
    result = json.loads((out / "moe_sim.json").read_text())
    assert result["simulated"] and {c["policy"] for c in result["cases"]} == {"static", "eplb", "omni"}
    assert all(c["requests"] == 4096 for c in result["cases"])
    (change,) = result["tpot_change"]
    headline(out, "moe-sim", f"DeepSeek-V3 decode on 64 H100: median TPOT {change['omni_tpot_vs_static']:+.1%} "
             f"omni vs static ({change['eplb_tpot_vs_static']:+.1%} EPLB)", change, args, True,
             "the documented command")


@needs(MOONCAKE)
def test_discedge_context_as_tokens(bench_out: Path) -> None:
    """DisCEdge: `edgecloud edge bench` with the demo model, all three modes at once on the same
    3-node emulated topology, 2 conversations of 3 turns per workload and a kill -9 of edge-b (the
    documented demo-model smoke run; the headline figures are from SmolLM2 on longer runs)."""
    out = out_dir(bench_out, "edge")
    args = ["edge", "bench", "--model", "demo", "--chat-template", DEMO_TEMPLATE, "--trace", MOONCAKE,
            "--conversations", "2", "--turns", "3", "--input-scale", "0.01", "--max-tokens", "16",
            "--think", "0.1", "--stagger", "0.3", "--kill", "edge-b:3", "--threads", "1",
            "--kv-cache-memory-mb", "16", "--json", out / "edge.json", "--plot", out / "edge.png"]
    run(args)
    cases = {c["workload"]: c for c in json.loads((out / "edge.json").read_text())["cases"]}
    assert set(cases) == {"mooncake", "roaming", "roaming+kill"}
    for workload, case in cases.items():
        modes = {"tokens"} if workload == "roaming+kill" else {"tokens", "text", "client"}
        assert set(case["modes"]) == modes, workload
        for mode in case["modes"].values():  # session guarantees, kill -9 included: not timings
            assert mode["turns"] == 6 and mode["stale_reads"] == 0 and mode["lost_turns"] == 0, workload
    assert cases["roaming+kill"]["modes"]["tokens"]["nodes_killed"] == ["edge-b"]
    comparisons = cases["mooncake"]["comparisons"]

    def ratio(name: str) -> str:
        r = comparisons[name]
        return f"x{r['ratio']:.3f} [{r['low']:.3f}, {r['high']:.3f}]"

    headline(out, "edge", f"Mooncake conversations: client request {ratio('request_tokens_over_client')} of "
             f"client-side context, sync bytes per turn {ratio('sync_tokens_over_text')} of text replication, "
             f"median response time {ratio('rt_tokens_over_text')}; 0 stale reads, 0 lost turns (kill -9 of "
             "edge-b included)", comparisons, args, False,
             "demo model (4,096-token vocabulary), 2 conversations x 3 turns per workload; the documented figures "
             "are SmolLM2's")


@needs(AZURE_CONV, AZURE_CODE)
def test_ooco_simulated(bench_out: Path) -> None:
    """OOCO: `edgecloud bench ooco --no-real` on 16 H100 (SIMULATED), load 0.25x, `priority` and
    `ooco` with the documented 1.0x rate (x386.3 since session 8, so no bisection) and 8 s of online arrivals + 4 s."""
    out = out_dir(bench_out, "ooco")
    args = ["bench", "ooco", "--no-real", "--online-trace", AZURE_CONV, "--offline-trace", AZURE_CODE,
            "--loads", "0.25", "--policies", "priority,ooco", "--sim-base-rate", "386.3", "--sim-duration", "8",
            "--sim-drain", "4", "--json", out / "ooco.json", "--plot", out / "ooco.png"]
    run(args)
    rows = {r["policy"]: r for r in json.loads((out / "ooco.json").read_text())["cases"]}
    assert set(rows) == {"priority", "ooco"} and all(r["simulated"] for r in rows.values())
    ratio = rows["ooco"]["offline_tok_s"] / rows["priority"]["offline_tok_s"]
    headline(out, "ooco", f"16 H100, load 0.25x: ooco {ratio:.2f}x the offline tokens/s of priority, SLO "
             f"attainment {rows['ooco']['slo_attainment']:.3f} (priority {rows['priority']['slo_attainment']:.3f})",
             {"ooco_over_priority": ratio}, args, True, "load 0.25x only, 2 policies, 8 s of online arrivals")


@needs(AZURE_CONV)
def test_loraserve_simulated(bench_out: Path) -> None:
    """LoRAServe: `edgecloud bench lora --no-real` on 32 H100 with 1,000 adapters (SIMULATED), slora
    and loraserve, three rates instead of five."""
    out = out_dir(bench_out, "lora")
    args = ["bench", "lora", "--no-real", "--trace", AZURE_CONV, "--policies", "slora,loraserve",
            "--rate-scales", "50,100,150", "--json", out / "lora.json", "--plot", out / "lora.png"]
    run(args)
    result = json.loads((out / "lora.json").read_text())
    cases = {c["policy"]: c for c in result["cases"]}
    assert set(cases) == {"slora", "loraserve"} and all(c["simulated"] for c in cases.values())
    ratio = cases["loraserve"]["throughput_tok_s"] / cases["slora"]["throughput_tok_s"]
    headline(out, "lora", f"32 H100, 1,000 adapters: loraserve {ratio:.2f}x slora's throughput at SLO",
             {"loraserve_over_slora_throughput_at_slo": ratio}, args, True, "rates 50,100,150x")


def test_netgpt_routing(bench_out: Path, tmp_path: Path) -> None:
    """NetGPT: `edgecloud edge netgpt bench`, both agents served for real, 8 calibration and 8 test
    questions instead of 64 + 64, over the 4 netem states x 4 price schedules."""
    out = out_dir(bench_out, "netgpt")
    args = ["edge", "netgpt", "bench", "--num-test", "8", "--num-calibration", "8", "--work-dir", tmp_path / "work",
            "--json", out / "netgpt.json", "--plot", out / "netgpt.png"]
    run(args)
    result = json.loads((out / "netgpt.json").read_text())
    assert len(result["answers"]) == 8  # the test questions' answers
    states = result["states"]
    assert len(states) == 4 * 4  # netem states x price schedules
    for state in states:
        assert {"edge", "cloud", "netgpt"} <= set(state["policies"])
    on = sum(bool(state["netgpt_on_or_above_fixed_frontier"]) for state in states)
    edge, cloud = result["agents"]["edge"]["test_accuracy"], result["agents"]["cloud"]["test_accuracy"]
    offload = [state["policies"]["netgpt"]["offload_rate"] for state in states]
    headline(out, "netgpt", f"NetGPT on or above the fixed thresholds' frontier in {on}/{len(states)} states; "
             f"test accuracy edge {edge:.3f}, cloud {cloud:.3f}; NetGPT offloads {min(offload):.2f}-{max(offload):.2f}",
             {"on_or_above_frontier": on, "states": len(states), "edge_accuracy": edge, "cloud_accuracy": cloud},
             args, False, "8 calibration + 8 test questions (documented: 64 + 64)")


@needs(MOONCAKE)
def test_cluster_prefix_aware_routing_simulated(bench_out: Path) -> None:
    """Cluster layer + simulator: `edgecloud bench cluster --no-real --sim-hardware h100` on 16 H100,
    the Mooncake trace's first 1,000 requests (the documented -42.7% is on 3,000)."""
    out = out_dir(bench_out, "cluster")
    args = ["bench", "cluster", "--no-real", "--trace", MOONCAKE, "--sim-hardware", "h100",
            "--sim-num-requests", "1000", "--json", out / "cluster.json", "--plot", out / "cluster.png"]
    run(args)
    rows = {r["policy"]: r for r in json.loads((out / "cluster.json").read_text())["cases"]}
    assert set(rows) == {"round-robin", "prefix-aware"}
    assert all(r["simulated"] and r["completed"] == 1000 and r["failed"] == 0 for r in rows.values())
    rr, pa = rows["round-robin"], rows["prefix-aware"]
    change = pa["ttft_ms_p50"] / rr["ttft_ms_p50"] - 1
    headline(out, "cluster", f"16 H100, Mooncake: prefix-aware routing TTFT p50 {change:+.1%} vs round-robin "
             f"(hit rate {pa['prefix_hit_rate']:.1%} vs {rr['prefix_hit_rate']:.1%})",
             {"ttft_p50_change": change, "hit_rate": {p: r["prefix_hit_rate"] for p, r in rows.items()}}, args, True,
             "the trace's first 1,000 requests (documented: -24% on 1,000, -42.7% on 3,000)")


def test_wmlm_small(bench_out: Path, tmp_path: Path) -> None:
    """WMLM: `edgecloud wireless bench` on a small generated set (64 train, 16 test, 16 unseen scenes)
    with 30 pretraining and probe steps: every task, fraction and family end to end, figures far
    from the documented hour-long run's."""
    out = out_dir(bench_out, "wireless")
    args = ["wireless", "bench", "--data", tmp_path / "data", "--train-scenes", "64", "--test-scenes", "16",
            "--unseen-scenes", "16", "--steps", "30", "--batch-size", "32", "--probe-max-steps", "30",
            "--workers", "2", "--threads", "2", "--json", out / "wmlm.json", "--plot", out / "wmlm.png"]
    run(args)
    from edgecloud.wireless.bench import retrieval_summary, summary

    report = json.loads((out / "wmlm.json").read_text())
    assert report["complete"]
    assert len(report["tasks"]) == 3 * 3 * (1 + 2 + 2 + 1)  # families x fractions x metrics of the 4 tasks
    rows = {(r["task"], r["label_fraction"], r["model"]): r for r in summary(report)}
    assert len(rows) == 4 * 3 * 2
    recall = {(r["pair"], r["model"]): r for r in retrieval_summary(report)}
    image_text = recall[("image->text", "wmlm")]
    margins = {task: rows[(task, 0.1, "wmlm")]["wmlm_better_by"] for task in ("los", "position", "beam")}
    headline(out, "wireless", f"image -> text recall@1 {image_text['times_chance']:.1f}x chance; at 10% labels the "
             f"frozen encoder + heads vs task-specific: LoS {margins['los']:+.3f}, localisation "
             f"{margins['position']:+.2f} m, beam {margins['beam']:+.3f}",
             {"image_text_times_chance": image_text["times_chance"], "margins_10pct": margins}, args, False,
             "64 train / 16 test / 16 unseen scenes, 30 pretraining and probe steps (documented: 3,200 / 800 / 800, "
             "400 steps, about an hour)")
