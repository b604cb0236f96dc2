"""The vehicle gateway's TLS as an independent client (the ``openssl s_client`` tool) sees it:
TLS 1.3 only, ephemeral ECDH over P-256 only, and a client certificate required."""

from __future__ import annotations

import asyncio
import shutil

import pytest

from .c2_harness import logged, scene
from .conftest import wait_for

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


async def _s_client(address, pki_dir, *extra: str) -> str:
    process = await asyncio.create_subprocess_exec(
        "openssl",
        "s_client",
        "-connect",
        f"{address[0]}:{address[1]}",
        "-CAfile",
        str(pki_dir / "ca.crt"),
        "-brief",
        *extra,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(b""), 20)
    return out.decode(errors="replace")


def test_openssl_client_sees_tls13_and_p256_and_nothing_else(pki_dir, c2_log):
    crt = str(pki_dir / "gcs-a.crt")  # leaf, then its issuing TC
    cert = ("-cert", crt, "-cert_chain", crt, "-key", str(pki_dir / "gcs-a.key"))

    async def run() -> None:
        async with scene(pki_dir) as s:
            ok = await _s_client(s.uxv.address, pki_dir, *cert)
            assert "Protocol version: TLSv1.3" in ok
            assert "Server Temp Key: ECDH, prime256v1, 256 bits" in ok
            assert "Verification: OK" in ok
            assert "alert handshake failure" in await _s_client(s.uxv.address, pki_dir, *cert, "-groups", "X25519")
            assert "alert protocol version" in await _s_client(s.uxv.address, pki_dir, *cert, "-tls1_2")
            await wait_for(lambda: logged(c2_log, "TLS handshake refused: NO_SUITABLE_KEY_SHARE"))
            await wait_for(lambda: logged(c2_log, "TLS handshake refused: UNSUPPORTED_PROTOCOL"))
            # The full TLS handshake was accepted; s_client then cannot speak NC2S, refused in turn.
            assert logged(c2_log, "peer closed the connection before HELLO")

    asyncio.run(run())
