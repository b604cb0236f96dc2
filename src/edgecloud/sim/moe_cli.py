"""``edgecloud bench moe-sim``: expert placement policies on simulated DeepSeek-V3 decode
(``edgecloud.sim.moe``; docs/moe.md). Every figure is SIMULATED."""

from __future__ import annotations

import argparse
from typing import Any

from edgecloud.errors import USAGE, CLIError, output_file
from edgecloud.sim.bench_cli import _positive


def _setups(text: str) -> tuple[tuple[str, int], ...]:
    setups = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        hardware, _, devices = part.partition(":")
        if not devices.isdigit() or int(devices) < 2:
            raise argparse.ArgumentTypeError(f"expected hardware:devices (devices >= 2) like h100:64, got {part!r}")
        setups.append((hardware, int(devices)))
    if not setups:
        raise argparse.ArgumentTypeError("expected at least one hardware:devices")
    return tuple(setups)


def _floats(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from None
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"expected numbers >= 0, got {text!r}")
    return values


def register(commands: Any, bench: Any) -> None:
    parser = bench.add_parser(
        "moe-sim", help="SIMULATED: expert placement (static, EPLB, OmniPlacement) on DeepSeek-V3 decode",
        description="One simulated instance per setup, experts over all its devices and attention data-parallel, "
        "a closed loop of batch_per_device x devices requests; synthetic Zipf routing per layer with one workload "
        "shift; TPOT per policy, the experts' and the dispatch's stretch, migration traffic. SIMULATED.",
    )
    parser.add_argument("--model", default="deepseek-v3")
    parser.add_argument("--setups", type=_setups, default=(("h100", 64), ("ascend910c", 128)),
                        help="hardware:devices, comma-separated")
    parser.add_argument("--batch-per-device", type=int, default=64)
    parser.add_argument("--zipf", type=_floats, default=(0.2, 0.35, 0.5), help="routing skews (Zipf s)")
    parser.add_argument("--shift-at", type=float, default=2.0, help="simulated second of the shift (<= 0: none)")
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--output-len", type=int, default=96)
    parser.add_argument("--spare-slots", type=int, default=1)
    parser.add_argument("--layers", type=int, default=8, help="MoE layers drawn per step")
    parser.add_argument("--migration-gb-s", type=_positive, default=25.0, help="host-to-device GB/s per device")
    parser.add_argument("--blocking-migration", action="store_true", help="copies before the step, not behind it")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", dest="json_path", type=output_file)
    parser.add_argument("--plot", dest="plot_path", type=output_file)
    parser.set_defaults(handler=_bench_moe_sim)


def _bench_moe_sim(args: argparse.Namespace) -> int:
    from edgecloud.sim.bench import write_json
    from edgecloud.sim.moe import MigrationModel, MoESimSettings, bench_moe_sim, plot_sim
    from edgecloud.sim.profiles import ProfileError

    for name in ("batch_per_device", "prompt_len", "output_len", "layers"):
        if getattr(args, name) < 1:
            raise CLIError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}", USAGE)
    if args.spare_slots < 0:
        raise CLIError(f"--spare-slots must be >= 0, got {args.spare_slots}", USAGE)
    settings = MoESimSettings(
        args.model, args.setups, args.batch_per_device, args.zipf, args.shift_at if args.shift_at > 0 else None,
        args.prompt_len, args.output_len, args.spare_slots, args.layers,
        migration=MigrationModel(args.migration_gb_s * 1e9, not args.blocking_migration), seed=args.seed,
    )
    try:
        report = bench_moe_sim(settings)
    except (ProfileError, ValueError) as error:
        raise CLIError(str(error), USAGE) from None
    for case in report["cases"]:
        f = case["expert_time_factor"]
        print(f"SIMULATED {case['hardware']:>10} EP={case['ep']:<3} zipf {case['routing']['zipf_s']:<4} "
              f"{case['policy']:6}: TPOT {case['tpot_ms']:.1f} ms, experts x{f['mean_factor']:.2f}, dispatch "
              f"x{f['mean_dispatch_factor']:.2f}, migrated {f['migrated_gb']:.1f} GB "
              f"({f['exposed_copy_s']:.3f} s exposed)")
    if args.json_path:
        write_json(args.json_path, report)
    if args.plot_path:
        plot_sim(args.plot_path, report)
    return 0
