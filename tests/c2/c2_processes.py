"""The C2 commands as separate processes, started the way a user would: ``edgecloud c2 uxv``,
``edgecloud c2 gcs`` and ``edgecloud c2 tc handover``. Shared by the end-to-end, scenario and
MAVProxy tests."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from pymavlink import mavutil

ACCEPTED = mavutil.mavlink.MAV_RESULT_ACCEPTED
DENIED = mavutil.mavlink.MAV_RESULT_DENIED

Process = asyncio.subprocess.Process


async def start_c2(log: Path, *args: str) -> tuple[Process, dict[str, Any]]:
    """Starts ``edgecloud c2 ARGS`` and waits for the JSON line it prints once it is ready."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edgecloud.cli", "c2", *args, stdout=asyncio.subprocess.PIPE, stderr=log.open("wb")
    )
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), 30)
    assert line, f"{args[0]} exited early: {log.read_text()}"
    return process, json.loads(line)


async def start_uxv(
    logs: Path, pki_dir: Path, name: str, vehicle_port: int, controller: str = "gcs-a"
) -> tuple[Process, dict[str, Any]]:
    return await start_c2(
        logs / f"{name}.log", "uxv", "--pki", str(pki_dir), "--name", name, "--listen", "127.0.0.1:0",
        "--mavlink", f"udp:127.0.0.1:{vehicle_port}", "--controller", controller,
    )


async def start_gcs(
    logs: Path, pki_dir: Path, name: str, connects: list[str], uxvs: tuple[str, ...] | list[str] = ()
) -> tuple[Process, dict[str, Any]]:
    """``connects`` are the vehicles' (or their proxies') HOST:PORT, ``uxvs`` their names."""
    targets = [arg for c in connects for arg in ("--connect", c)] + [arg for u in uxvs for arg in ("--uxv", u)]
    return await start_c2(
        logs / f"{name}.log", "gcs", "--pki", str(pki_dir), "--name", name, *targets, "--mavlink", "udp:127.0.0.1:0"
    )


async def tc_handover(pki_dir: Path, connect: str, uxv: str, source: str, target: str) -> dict[str, Any]:
    """Runs ``edgecloud c2 tc handover`` as the TC ``tc-1`` and returns its JSON result."""
    tc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edgecloud.cli", "c2", "tc", "handover", "--pki", str(pki_dir), "--name", "tc-1",
        "--connect", connect, "--uxv", uxv, "--from", source, "--to", target,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(tc.communicate(), 60)
    assert tc.returncode == 0, err.decode()
    return json.loads(out)


async def stop_all(processes: list[Process]) -> None:
    for process in processes:
        process.terminate()
        await process.wait()
