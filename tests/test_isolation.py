"""The suite's own guarantee that a test sees the same process-wide state alone and after any other
test (``same_process_state_for_every_test`` in tests/conftest.py): a pytest session of its own runs
a test that changes torch's thread count and draws from the global generators, then one that
checks it starts as if it ran first."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

TESTS = '''
import random

import numpy as np
import torch

THREADS = torch.get_num_threads()


def first_draws():
    return random.random(), float(np.random.random()), torch.randn(3)


def test_a_changes_the_process_state():
    torch.set_num_threads(THREADS + 1)
    first_draws()


def test_b_starts_as_if_it_ran_first():
    assert torch.get_num_threads() == THREADS
    r, n, t = first_draws()
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    again = first_draws()
    assert (r, n) == again[:2] and torch.equal(t, again[2])
'''


def test_a_test_after_another_sees_the_state_it_would_see_alone(tmp_path: Path) -> None:
    (tmp_path / "test_state.py").write_text(TESTS)
    # the suite's conftest, as the inner session's own
    fixture = "from tests.conftest import same_process_state_for_every_test  # noqa: F401\n"
    (tmp_path / "conftest.py").write_text(fixture)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-p", "no:cacheprovider",
         "--rootdir", str(tmp_path), "-c", os.devnull, str(tmp_path / "test_state.py")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "2 passed" in run.stdout
