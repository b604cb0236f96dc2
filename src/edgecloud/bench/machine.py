"""The machine a benchmark ran on, and whether other work on it distorted the figures.

Every edgecloud benchmark records the CPU model and the load at its start and end, prints them,
and warns when the machine was busy enough to distort its timings: on a shared 2-core machine
one benchmark measured 14.8 tok/s under load against 248 quiet, another 0.77× against 12.9×.

Load averages count runnable processes, this benchmark's own included, and lag a minute
behind, so they are recorded but are not what decides. What decides is the CPU time that
*other* processes used during the run: the machine's busy time from ``/proc/stat`` less this
process's and its children's own (live children read from ``/proc``, reaped ones from
``os.times``), as a share of the CPUs' capacity over the run. Work of niced processes
(``nice -n 19 make test``) yields to a benchmark at normal priority and is counted apart, with
a higher threshold: it still takes cores the benchmark leaves idle, and caches and memory
bandwidth.

Where the benchmark does not run all of its work itself (``bench serve`` measures a server that
may be another process on this machine), other processes' CPU time cannot be told from the
server's; the load average at the start, before the benchmark ran, decides instead.

Use::

    watch = LoadWatch.begin()          # prints the start line on stderr
    ...                                # the benchmark
    load = watch.finish()              # prints the end line, and a warning if it was busy
    report["machine"] = load.as_dict()
"""

from __future__ import annotations

import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TextIO

OTHERS_SHARE_LIMIT = 0.25
"""Share of the machine's CPU time that other processes at normal priority may use during a run
before its figures count as distorted."""
NICED_SHARE_LIMIT = 0.5
"""The same for niced processes, which yield to the benchmark but still take idle cores."""
START_LOAD_PER_CPU_LIMIT = 1.0
"""Where other processes' CPU time cannot be measured: the 1-minute load average per CPU at the
start above which the machine counts as busy (every CPU already had a runnable process)."""

_PROC_STAT = Path("/proc/stat")


@dataclass(frozen=True)
class MachineSample:
    """The machine at one instant."""

    time: str  # ISO 8601, local time
    monotonic_s: float
    load_average: tuple[float, float, float]  # 1, 5 and 15 minutes
    busy_s: float | None  # all CPUs' busy time since boot, normal priority (None: no /proc/stat)
    niced_busy_s: float | None  # all CPUs' time running niced processes since boot
    own_cpu_s: float  # CPU time of this process and its children, live and reaped


@dataclass(frozen=True)
class MachineLoad:
    """A run's machine: what it is, the load at the start and end, and whether it was busy."""

    cpu: str
    logical_cpus: int
    start: MachineSample
    end: MachineSample
    self_contained: bool  # the benchmark ran all of its work in this process and its children
    timed: bool  # the figures depend on the wall clock (False: a virtual clock, load is harmless)

    @property
    def duration_s(self) -> float:
        return self.end.monotonic_s - self.start.monotonic_s

    def _share(self, start: float | None, end: float | None, own: float = 0.0) -> float | None:
        capacity = self.duration_s * self.logical_cpus
        if start is None or end is None or capacity <= 0:
            return None
        return min(1.0, max(0.0, (end - start - own) / capacity))

    @property
    def others_share(self) -> float | None:
        """Share of the CPUs' time over the run that other processes at normal priority used
        (None where it cannot be told: no ``/proc/stat``, or not self-contained)."""
        if not self.self_contained:
            return None
        own = self.end.own_cpu_s - self.start.own_cpu_s
        if _niced():
            own = 0.0  # this process's time is in the niced column, not in busy_s
        return self._share(self.start.busy_s, self.end.busy_s, own)

    @property
    def niced_share(self) -> float | None:
        """The same for niced processes (this one excluded when it is niced itself)."""
        if not self.self_contained:
            return None
        own = self.end.own_cpu_s - self.start.own_cpu_s if _niced() else 0.0
        return self._share(self.start.niced_busy_s, self.end.niced_busy_s, own)

    def busy_reason(self) -> str | None:
        """Why the figures count as distorted, or None when the machine was quiet enough."""
        if not self.timed:
            return None
        others, niced = self.others_share, self.niced_share
        if others is not None and others >= OTHERS_SHARE_LIMIT:
            return (
                f"other processes used {others:.0%} of its CPU time during the run "
                f"(limit {OTHERS_SHARE_LIMIT:.0%})"
            )
        if niced is not None and niced >= NICED_SHARE_LIMIT:
            return (
                f"niced processes used {niced:.0%} of its CPU time during the run "
                f"(limit {NICED_SHARE_LIMIT:.0%})"
            )
        if others is None:
            load = self.start.load_average[0]
            if load >= START_LOAD_PER_CPU_LIMIT * self.logical_cpus:
                return f"its load average was {load:.2f} on {self.logical_cpus} CPUs when the run started"
        return None

    @property
    def busy(self) -> bool:
        return self.busy_reason() is not None

    def warning(self) -> str | None:
        reason = self.busy_reason()
        if reason is None:
            return None
        return (
            f"warning: the machine was busy: {reason}; these timings are distorted: "
            "rerun on a quiet machine, or label them as taken under load"
        )

    def end_line(self) -> str:
        line = f"machine: load average {_loads(self.end)} at the end, after {self.duration_s:.1f} s"
        others, niced = self.others_share, self.niced_share
        if others is not None:
            line += f"; other processes used {others:.0%} of the CPU time"
            if niced is not None:
                line += f" (niced ones {niced:.0%})"
        if not self.timed:
            line += "; virtual clock: the figures do not depend on the load"
        return line

    def as_dict(self) -> dict[str, object]:
        """JSON-ready: the samples, the shares, and the verdict."""
        return {
            "cpu": self.cpu,
            "logical_cpus": self.logical_cpus,
            "python": platform.python_version(),
            "start": asdict(self.start),
            "end": asdict(self.end),
            "duration_s": round(self.duration_s, 3),
            "self_contained": self.self_contained,
            "timed": self.timed,
            "others_cpu_share": _rounded(self.others_share),
            "niced_cpu_share": _rounded(self.niced_share),
            "busy": self.busy,
            "busy_reason": self.busy_reason(),
        }


class LoadWatch:
    """Samples the machine at a benchmark's start and end; prints both and warns when busy."""

    def __init__(
        self, *, self_contained: bool = True, timed: bool = True, out: TextIO | None = None, quiet: bool = False
    ) -> None:
        self.self_contained = self_contained
        self.timed = timed
        self.out = out
        self.quiet = quiet
        self.cpu = cpu_model()
        self.logical_cpus = os.cpu_count() or 1
        self.start = sample()

    @classmethod
    def begin(
        cls, *, self_contained: bool = True, timed: bool = True, out: TextIO | None = None, quiet: bool = False
    ) -> LoadWatch:
        """Sample now and print the start line (on ``out``, stderr by default)."""
        watch = cls(self_contained=self_contained, timed=timed, out=out, quiet=quiet)
        watch._print(
            f"machine: {watch.cpu}, {watch.logical_cpus} logical CPUs; load average {_loads(watch.start)} "
            f"(1, 5, 15 min) at the start, {watch.start.time}"
        )
        return watch

    def finish(self) -> MachineLoad:
        """Sample again; print the end line and, when the machine was busy, a warning."""
        load = MachineLoad(
            self.cpu, self.logical_cpus, self.start, sample(), self.self_contained, self.timed
        )
        self._print(load.end_line())
        warning = load.warning()
        if warning is not None:
            self._print(warning)
        return load

    def _print(self, line: str) -> None:
        if not self.quiet:
            print(line, file=self.out or sys.stderr, flush=True)


def sample() -> MachineSample:
    busy, niced = _machine_busy_s()
    return MachineSample(
        time=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        monotonic_s=time.monotonic(),
        load_average=tuple(round(x, 2) for x in os.getloadavg()),  # type: ignore[arg-type]
        busy_s=busy,
        niced_busy_s=niced,
        own_cpu_s=_own_cpu_s(),
    )


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; the platform's machine type where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _machine_busy_s() -> tuple[float | None, float | None]:
    """All CPUs' busy time at normal priority and niced, in seconds since boot."""
    try:
        first = _PROC_STAT.read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None, None
    if first[0] != "cpu":
        return None, None
    # user nice system idle iowait irq softirq steal ... (guest time is already inside user/nice)
    ticks = [int(x) for x in first[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = ticks
    hz = os.sysconf("SC_CLK_TCK")
    return (user + system + irq + softirq + steal) / hz, nice / hz


def _own_cpu_s() -> float:
    """CPU time of this process, its reaped children, and its live descendants."""
    times = os.times()
    total = times.user + times.system + times.children_user + times.children_system
    return total + sum(_descendants_cpu_s(os.getpid()))


def _descendants_cpu_s(root: int) -> list[float]:
    """CPU time (own and reaped children's) of each live descendant of ``root``, from ``/proc``."""
    children: dict[int, list[int]] = {}
    cpu: dict[int, float] = {}
    hz = os.sysconf("SC_CLK_TCK")
    try:
        entries = [e for e in os.listdir("/proc") if e.isdigit()]
    except OSError:
        return []
    for entry in entries:
        try:
            text = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue  # gone since the listing
        # the command name is in parentheses and may hold spaces: fields follow the last ')'
        fields = text[text.rindex(")") + 2 :].split()
        ppid = int(fields[1])
        children.setdefault(ppid, []).append(int(entry))
        cpu[int(entry)] = sum(int(x) for x in fields[11:15]) / hz  # utime stime cutime cstime
    out, stack = [], list(children.get(root, []))
    while stack:
        pid = stack.pop()
        out.append(cpu[pid])
        stack.extend(children.get(pid, []))
    return out


def _niced() -> bool:
    try:
        return os.getpriority(os.PRIO_PROCESS, 0) > 0
    except (AttributeError, OSError):
        return False


def _loads(s: MachineSample) -> str:
    return " ".join(f"{x:.2f}" for x in s.load_average)


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
