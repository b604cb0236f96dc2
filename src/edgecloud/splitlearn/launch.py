"""The BS and the UEs as processes on several machines, launched torchrun-style.

``torchrun`` starts one process per rank on every machine and hands each ``RANK``,
``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``; the same command line runs on every machine
(see docs/splitlearn.md for a two-machine example). Rank 0 is the base station, rank ``k`` is
UE ``k-1``. The runtime needs no global process group (``runtime`` explains why): every process
only needs the rendezvous store, so we open torchrun's own TCPStore (its agent's store when
``TORCHELASTIC_USE_AGENT_STORE`` is set, otherwise rank 0 hosts one at the master address) and
run the loopback runtime's ``run_bs`` / ``run_ue`` over it; each UE then opens its two-rank gloo
pair with the BS across the network.

Rank 0 decides the plan: it profiles and calibrates its own host, measures the message latency
and optimises (or takes ``--cut``/``--micro-batches``), then publishes the whole ``TrainConfig``
as JSON in the store; the UEs read it, load the data set from their own install and keep only
their shard. Wherever a UE runs, its emulated slowdown and link rates are the plan's, so the
schedule is the one the latency model predicts.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

STORE_PREFIX = "edgecloud-splitlearn"
CONFIG_KEY = "config"
STORE_TIMEOUT_S = 600.0  # the UEs wait this long for the BS to calibrate and publish the plan


def add_node_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``edgecloud splitlearn node`` beyond the common ones (the same on every machine)."""
    parser.add_argument(
        "--schedule", choices=("sequential", "c2p2sl", "c2p2sl_fixed_cut"), default="c2p2sl", help="what to train"
    )
    parser.add_argument("--bandwidth-mhz", type=float, default=2.0, help="uplink band (MHz)")
    parser.add_argument("--epochs", type=int, default=1, help="passes over the training set")
    parser.add_argument("--max-rounds", type=int, default=None, help="stop after this many rounds (smoke tests)")
    parser.add_argument(
        "--cut", type=int, default=None, help="fix the cut instead of optimising (with --micro-batches)"
    )
    parser.add_argument(
        "--micro-batches", default=None, help="fix every UE's micro-batches, m0,m1,... (with --cut; equal shares)"
    )
    parser.add_argument("--json", default=None, help="rank 0 writes the run's result here")


def _env_int(name: str) -> int:
    value = os.environ.get(name)
    if value is None:
        raise RuntimeError(f"{name} is not set: start this command with torchrun (see docs/splitlearn.md)")
    return int(value)


def open_store(rank: int) -> Any:
    """torchrun's rendezvous store (or one that rank 0 hosts), under this run's prefix."""
    import torch.distributed as dist

    host = os.environ.get("MASTER_ADDR")
    port = _env_int("MASTER_PORT")
    if host is None:
        raise RuntimeError("MASTER_ADDR is not set: start this command with torchrun (see docs/splitlearn.md)")
    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(
        host,
        port,
        is_master=rank == 0 and not agent_store,
        wait_for_workers=False,
        timeout=datetime.timedelta(seconds=STORE_TIMEOUT_S),
    )
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return dist.PrefixStore(f"{STORE_PREFIX}/{attempt}", store)


def config_to_json(config: Any) -> str:
    return json.dumps(asdict(config))


def config_from_json(text: str) -> Any:
    from edgecloud.splitlearn.latency import Plan, UEConfig
    from edgecloud.splitlearn.runtime import TrainConfig, UEFault

    fields = json.loads(text)
    plan = fields.pop("plan")
    plan["micro_batches"] = tuple(plan["micro_batches"])
    plan["uplink_shares"] = tuple(plan["uplink_shares"])
    return TrainConfig(
        plan=Plan(**plan),
        ues=tuple(UEConfig(**u) for u in fields.pop("ues")),
        faults=tuple(UEFault(**f) for f in fields.pop("faults")),
        **fields,
    )


def _fixed_plan(args: argparse.Namespace, num_ues: int) -> Any:
    from edgecloud.splitlearn.latency import Plan

    if args.micro_batches is None:
        raise ValueError("--cut needs --micro-batches (one count per UE)")
    micro = tuple(int(m) for m in args.micro_batches.split(","))
    if len(micro) != num_ues:
        raise ValueError(f"--micro-batches needs one count per UE ({num_ues}), got {args.micro_batches!r}")
    schedule = "sequential" if args.schedule == "sequential" else "c2p2sl"
    return Plan(schedule, args.cut, micro, (1.0 / num_ues,) * num_ues)


def _bs(args: argparse.Namespace, store: Any, num_ues: int) -> int:
    from edgecloud.splitlearn.bench import DEFAULT_BATCH, DEFAULT_UES, measure_host, plans_for, scenario_for
    from edgecloud.splitlearn.cli import train_config
    from edgecloud.splitlearn.data import dataset_spec, load_split
    from edgecloud.splitlearn.runtime import run_bs

    ues = args.ues or DEFAULT_UES[args.dataset]
    batch = args.batch or DEFAULT_BATCH[args.dataset]
    if len(ues) != num_ues:
        raise ValueError(f"--ues lists {len(ues)} UEs but torchrun started {num_ues} UE ranks (WORLD_SIZE - 1)")
    print(f"BS (rank 0): {dataset_spec(args.dataset).description}", flush=True)
    if args.cut is not None:
        plan = _fixed_plan(args, num_ues)
    else:
        print("BS: profiling, calibrating and planning ...", flush=True)
        host = measure_host(args.dataset, args.model, args.seed)
        scenario = scenario_for(host, ues, batch, args.bandwidth_mhz, args.syncs_per_epoch)
        plan = plans_for(scenario, args.max_micro_batches)[args.schedule]
    config = train_config(args, plan, args.max_rounds)
    data = load_split(config.dataset, config.seed, config.torch_dtype)
    store.set(CONFIG_KEY, config_to_json(config))
    print(f"BS: plan published (cut {plan.cut}, micro-batches {list(plan.micro_batches)}); waiting for UEs", flush=True)
    result = run_bs(config, data.test, len(data.train), store, initial_wait_s=STORE_TIMEOUT_S)
    print(
        f"BS: trained {len(result.round_end_s)} rounds in {result.time_s:.1f} s; "
        f"final test accuracy {100 * result.accuracy:.2f}%",
        flush=True,
    )
    for event in result.events:
        print(f"  event: {event}")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "config": json.loads(config_to_json(config)),
                    "time_s": result.time_s,
                    "accuracy": result.accuracy,
                    "participants": result.participants,
                    "evaluations": [[e.round, e.time_s, e.accuracy] for e in result.evaluations],
                    "events": result.events,
                },
                indent=2,
            )
            + "\n"
        )
    return 0


def _ue(store: Any, ue: int) -> int:
    from edgecloud.splitlearn.data import load_split, ue_shard
    from edgecloud.splitlearn.runtime import run_ue

    config = config_from_json(store.get(CONFIG_KEY).decode())
    if ue >= len(config.ues):
        raise ValueError(f"rank {ue + 1} has no UE: the plan has {len(config.ues)} UEs")
    data = load_split(config.dataset, config.seed, config.torch_dtype)
    run_ue(config, ue_shard(data.train, len(config.ues), ue), lambda: store, ue)
    return 0  # run_ue exits the process; kept for the type checker


def node_main(args: argparse.Namespace) -> int:
    import logging

    import torch

    torch.set_num_threads(1)
    rank, world = _env_int("RANK"), _env_int("WORLD_SIZE")
    if world < 2:
        raise ValueError(f"WORLD_SIZE must be >= 2 (a BS and at least one UE), got {world}")
    logging.basicConfig(level=logging.WARNING, format=f"%(asctime)s rank{rank} %(message)s")
    store = open_store(rank)
    code = _bs(args, store, world - 1) if rank == 0 else _ue(store, rank - 1)
    sys.stdout.flush()
    os._exit(code)  # skip gloo teardown of pairs whose peers may be gone


def main(argv: list[str] | None = None) -> int:
    """``python -m edgecloud.splitlearn.launch ARGS`` is ``edgecloud splitlearn node ARGS`` (for torchrun -m)."""
    from edgecloud.cli import main as cli_main

    return cli_main(["splitlearn", "node", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
