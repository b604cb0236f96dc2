"""Shared fixtures: one test PKI per session, and helpers that run real gateways on loopback."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from edgecloud.c2 import pki
from edgecloud.c2.privileges import DEFAULT_PRIVILEGES, HANDOVER_APPROVE, Role, parse_privileges


@pytest.fixture(scope="session")
def pki_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root CA; TCs ``tc-1`` and ``tc-other`` (sub-CAs); GCSs issued by tc-1; vehicles by the root; and
    the odd ones the rejection tests need (limited, expired, revoked, a TC without
    ``handover:approve``)."""
    directory = tmp_path_factory.mktemp("pki")
    pki.init(directory)
    pki.issue_to_directory(directory, "tc-1", Role.TC)
    pki.issue_to_directory(directory, "tc-other", Role.TC)
    # Everything a TC holds but handover:approve: it may connect, issue and revoke, not hand over.
    no_approve = DEFAULT_PRIVILEGES[Role.TC] - {HANDOVER_APPROVE}
    pki.issue_to_directory(directory, "tc-no-approve", Role.TC, no_approve)
    for name in ("gcs-a", "gcs-b", "gcs-c"):
        pki.issue_to_directory(directory, name, Role.GCS, issuer="tc-1")
    for name in ("uxv-1", "uxv-2"):
        pki.issue_to_directory(directory, name, Role.UXV)
    limited = parse_privileges(["telemetry", "cmd:COMPONENT_ARM_DISARM", "msg:HEARTBEAT"])
    pki.issue_to_directory(directory, "gcs-limited", Role.GCS, limited, issuer="tc-1")
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
    pki.issue_to_directory(directory, "gcs-expired", Role.GCS, days=1, issuer="tc-1", valid_from=long_ago)
    pki.issue_to_directory(directory, "gcs-revoked", Role.GCS, issuer="tc-1")
    pki.revoke(directory, "gcs-revoked")
    return directory


@pytest.fixture(scope="session")
def foreign_pki_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second, unrelated CA that issued a GCS certificate with a familiar name."""
    directory = tmp_path_factory.mktemp("foreign-pki")
    pki.init(directory, common_name="someone else's root")
    pki.issue_to_directory(directory, "gcs-a", Role.GCS)
    return directory


@pytest.fixture
def own_pki_dir(pki_dir: Path, tmp_path: Path) -> Path:
    """A private copy for tests that write to the PKI (revocation pushed over the protocol)."""
    return Path(shutil.copytree(pki_dir, tmp_path / "pki"))


async def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


@pytest.fixture
def c2_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="edgecloud.c2")
    return caplog
