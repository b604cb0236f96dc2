"""``edgecloud c2``'s expected failures: an existing credential is not overwritten without
``--force``, a taken port is one line, and a GCS backs off on errors that may heal and gives up,
saying why, on those that cannot (revoked, another CA)."""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
from pathlib import Path

import pytest

from edgecloud.c2 import gateway as gateway_module
from edgecloud.c2.gateway import GcsGateway, UxvGateway
from edgecloud.cli import main


def test_pki_issue_refuses_to_overwrite_without_force(own_pki_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cert, key = own_pki_dir / "gcs-a.crt", own_pki_dir / "gcs-a.key"
    before = cert.read_bytes(), key.read_bytes()
    argv = ["c2", "pki", "issue", str(own_pki_dir), "--role", "gcs", "--name", "gcs-a"]
    assert main(argv) == 2
    assert capsys.readouterr().err == (
        f"edgecloud c2 pki issue: error: {cert} exists: refusing to overwrite 'gcs-a''s credential; pass --force "
        "to replace it, or use `c2 pki renew` for a fresh validity with the same key\n"
    )
    assert (cert.read_bytes(), key.read_bytes()) == before
    assert main([*argv, "--force"]) == 0
    assert cert.read_bytes() != before[0] and key.read_bytes() != before[1]
    assert key.stat().st_mode & 0o777 == 0o600


def test_tc_issue_refuses_to_overwrite_without_force(own_pki_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["c2", "tc", "issue", "--pki", str(own_pki_dir), "--name", "tc-1", "--subject", "gcs-b", "--role", "gcs"]
    assert main(argv) == 2
    assert "gcs-b.crt exists: refusing to overwrite 'gcs-b''s credential" in capsys.readouterr().err
    assert main([*argv, "--force"]) == 0


def test_uxv_on_a_taken_port_is_one_line(pki_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = ["c2", "uxv", "--pki", str(pki_dir), "--name", "uxv-1", "--listen", f"127.0.0.1:{port}",
                "--mavlink", "udp:127.0.0.1:9", "--quiet"]  # fmt: skip
        assert main(argv) == 1
    assert capsys.readouterr().err == (
        f"edgecloud c2 uxv: error: cannot listen on 127.0.0.1:{port}: the address is already in use; stop what "
        "holds it or pass another --listen (port 0 picks a free one)\n"
    )


def test_a_revoked_gcs_gives_up_with_a_clear_message(pki_dir: Path) -> None:
    async def run() -> tuple[int | None, str]:
        uxv = await UxvGateway(pki_dir, "uxv-1", ("127.0.0.1", 0), ("127.0.0.1", 9)).start()
        try:
            host, port = uxv.address
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "edgecloud.cli", "c2", "gcs", "--pki", str(pki_dir), "--name", "gcs-revoked",
                "--connect", f"{host}:{port}", "--uxv", "uxv-1", "--mavlink", "udp:127.0.0.1:0",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            _, err = await asyncio.wait_for(process.communicate(), 60)
            return process.returncode, err.decode()
        finally:
            await uxv.stop()

    returncode, err = asyncio.run(run())
    assert returncode == 1
    assert err == (
        "edgecloud c2 gcs: error: gave up: gcs gcs-revoked: TLS handshake refused: SSLV3_ALERT_CERTIFICATE_REVOKED: "
        "the peer holds this node's certificate as revoked: have a new one issued (c2 pki issue --force, or c2 tc "
        "issue) and restart\n"
    )  # at once: no "retrying" lines


def test_a_gcs_of_another_ca_gives_up(pki_dir: Path, foreign_pki_dir: Path) -> None:
    async def run() -> str:
        uxv = await UxvGateway(pki_dir, "uxv-1", ("127.0.0.1", 0), ("127.0.0.1", 9)).start()
        gcs = await GcsGateway(foreign_pki_dir, "gcs-a", uxv.address, ("127.0.0.1", 0)).start()
        try:
            await asyncio.wait_for(gcs.gave_up.wait(), 20)
            return str(gcs.vehicles[0].gave_up)
        finally:
            await gcs.stop()
            await uxv.stop()

    reason = asyncio.run(run())
    assert reason.startswith("gcs gcs-a: TLS handshake refused: certificate verify failed: ")
    assert reason.endswith("the peer's certificate is not from this node's root CA: both need one PKI directory")


def test_a_closed_port_is_retried_with_exponential_backoff(
    pki_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(gateway_module, "RETRY_FIRST_S", 0.01)
    monkeypatch.setattr(gateway_module, "RETRY_MAX_S", 0.04)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[:2]

    async def run() -> None:
        gcs = await GcsGateway(pki_dir, "gcs-a", closed, ("127.0.0.1", 0)).start()
        try:
            while len([r for r in caplog.records if "retrying in" in r.getMessage()]) < 5:
                await asyncio.sleep(0.01)
            assert not gcs.gave_up.is_set()  # a closed port may open: keep trying
        finally:
            await gcs.stop()

    with caplog.at_level(logging.WARNING, logger="edgecloud.c2"):
        asyncio.run(run())
    waits = [r.getMessage().rsplit("retrying in ", 1)[1] for r in caplog.records if "retrying in" in r.getMessage()]
    assert waits[:5] == ["0.01 s", "0.02 s", "0.04 s", "0.04 s", "0.04 s"]
    assert f"cannot reach {closed[0]}:{closed[1]}: Connection refused" in caplog.records[0].getMessage()
