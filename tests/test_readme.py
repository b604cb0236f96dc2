"""The README's commands, as written: every `edgecloud ...` line parses with today's CLI (so a renamed
option or sub-command cannot hide in the docs), and the walkthroughs that run servers in the
background (a block with `&` lines) run end to end in a fresh directory, up to their cleanup line."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgecloud.cli import build_parser

README = Path(__file__).resolve().parents[1] / "README.md"


def bash_blocks() -> list[list[str]]:
    """The README's ```bash blocks as lists of logical lines (continuations joined)."""
    blocks: list[list[str]] = []
    current: list[str] | None = None
    for line in README.read_text().splitlines():
        if line.strip() == "```bash":
            current = []
        elif line.strip() == "```" and current is not None:
            blocks.append(current)
            current = None
        elif current is not None:
            if current and current[-1].endswith("\\"):
                current[-1] = current[-1][:-1] + " " + line.strip()
            else:
                current.append(line)
    return blocks


def command_words(line: str) -> list[str] | None:
    """The words of an `edgecloud` command on a line (comment, background `&`, env and pipes dropped)."""
    try:
        words = shlex.split(line, comments=True)
    except ValueError:
        return None
    words = [w for w in words if w != "&"]
    while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
        words = words[1:]
    if "&&" in words:  # `a && edgecloud b`: check each side
        return None
    if "|" in words:
        words = words[: words.index("|")]
    if not words or Path(words[0]).name != "edgecloud":  # edgecloud or .venv/bin/edgecloud
        return None
    return words[1:]


def all_commands() -> list[list[str]]:
    commands = []
    for block in bash_blocks():
        for line in block:
            for part in line.split("&&"):
                words = command_words(part)
                if words is not None:
                    commands.append(words)
    return commands


COMMANDS = all_commands()


def test_the_readme_has_commands_for_every_system() -> None:
    systems = {words[0] if words[0] != "bench" else f"bench {words[1]}" for words in COMMANDS}
    for expected in ("generate", "serve", "bench engine", "bench serve", "stream", "netem", "c2", "splitlearn"):
        assert expected in systems, f"no README command for {expected}"


@pytest.mark.parametrize("words", COMMANDS, ids=[" ".join(w)[:80] for w in COMMANDS])
def test_every_readme_command_parses(words: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for word in words:  # output files' directories exist where a user would have made them
        if "/" in word and not word.startswith(("-", "/", "http", ".", "udp")):
            (tmp_path / word).parent.mkdir(parents=True, exist_ok=True)
    try:
        build_parser().parse_args(words)
    except SystemExit as exc:
        pytest.fail(f"`edgecloud {' '.join(words)}` does not parse (exit {exc.code})")


def walkthrough(marker: str) -> str:
    """The script of the walkthrough block containing ``marker``, up to and including its cleanup."""
    for block in bash_blocks():
        if any(marker in line for line in block):
            lines = []
            for line in block:
                lines.append(line)
                if line.lstrip().startswith("kill %"):
                    return "\n".join(lines)
    raise AssertionError(f"no walkthrough with {marker!r} in the README")


def kill_session(sid: int) -> None:
    """SIGKILLs every process of session ``sid``. The walkthrough's bash runs with job control
    (``set -m``), which puts each background job in a process group of its own, so killing the
    script's group alone leaves its servers running (and holding their ports) after a timeout."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) == sid:  # field 6 of /proc/PID/stat: the session id
                os.kill(int(stat.parent.name), signal.SIGKILL)


def run_script(script: str, cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    """Runs a walkthrough in its own process group (errexit for its foreground steps, job control for
    its `%N` cleanup); on a timeout every process it started is killed, none outlives the test."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(["bash", "-c", f"set -e -m\n{script}\nwait || true"], cwd=cwd, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_session(process.pid)
        out, err = process.communicate()
        pytest.fail(f"the walkthrough did not finish within {timeout:.0f} s:\n{err[-3000:]}")
    finally:
        kill_session(process.pid)  # anything a cleanup line missed, and every job after a timeout
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def test_the_streaming_walkthrough_plays_the_whole_stream(tmp_path: Path) -> None:
    script = walkthrough("edgecloud stream play")
    script = script.replace('edgecloud stream play "', f'edgecloud stream play --json {tmp_path}/play.json "')
    result = run_script(script, tmp_path, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    play = json.loads((tmp_path / "play.json").read_text())
    assert play["frames"] == 300, play
    # Zero stalls is what a quiet machine shows (docs/stream.md); on a loaded one the player may
    # stall briefly, so the load is part of the message when it does.
    load = os.getloadavg()[0]
    assert play["stalls"] == 0 or load > 2 * (os.cpu_count() or 1), (play["stalls"], load)


def test_the_c2_walkthrough_runs_end_to_end(tmp_path: Path) -> None:
    result = run_script(walkthrough("edgecloud c2 tc handover"), tmp_path, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "result : 0" in result.stdout  # the arm command, sent through gcs-b after the handover, was accepted
    assert "gave up: gcs gcs-a: TLS handshake refused: SSLV3_ALERT_CERTIFICATE_REVOKED" in result.stderr


def test_a_timed_out_walkthrough_leaves_no_background_job_running(tmp_path: Path) -> None:
    """The walkthroughs start servers as background jobs under job control; a timeout must take
    them down too, or they hold their ports and break every later run."""
    pid_file = tmp_path / "job.pid"
    with pytest.raises(pytest.fail.Exception, match="did not finish"):
        run_script(f"sleep 60 > /dev/null 2>&1 &\necho $! > {pid_file}\nsleep 60 > /dev/null 2>&1", tmp_path, timeout=1)
    job = int(pid_file.read_text())
    for _ in range(50):  # SIGKILL is delivered at once; reaping by init may take a moment
        stat = Path(f"/proc/{job}/stat")
        if not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return
        time.sleep(0.1)
    raise AssertionError(f"background job {job} outlived the walkthrough")
