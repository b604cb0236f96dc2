"""``edgecloud c2 ...``: NC2S credentials, gateways, TC actions and the benchmark.

Imports (asyncio, cryptography, pymavlink) happen inside handlers so ``edgecloud --help`` stays fast.
Gateways print one JSON line ``{"event": "ready", ...}`` with their bound addresses once they
listen, so scripts can use port 0.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from edgecloud.errors import USAGE, CLIError, listen_failed, output_file


def _guarded(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Bad input (names, privileges, addresses, missing files) ends with one precise line, not a
    traceback: a usage error (exit 2) for ``edgecloud.cli.main`` to print."""

    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except FileNotFoundError as exc:
            raise CLIError(f"no such file: {exc.filename} (check --pki and --name)", USAGE) from exc
        except ValueError as exc:
            raise CLIError(str(exc), USAGE) from exc

    return run


def _ready(**fields: object) -> None:
    print(json.dumps({"event": "ready", **fields}), flush=True)


def _logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )


def _privileges(values: list[str] | None):
    from edgecloud.c2.privileges import parse_privileges

    return None if not values else parse_privileges(values)


def _pki_init(args: argparse.Namespace) -> int:
    from edgecloud.c2 import pki

    print(pki.init(Path(args.dir)))
    return 0


def _pki_issue(args: argparse.Namespace) -> int:
    from edgecloud.c2 import pki
    from edgecloud.c2.privileges import Role

    path = pki.issue_to_directory(
        Path(args.dir),
        args.name,
        Role(args.role),
        _privileges(args.privileges),
        args.days,
        issuer=args.issuer,
        overwrite=args.force,
    )
    print(path)
    return 0


def _pki_revoke(args: argparse.Namespace) -> int:
    from edgecloud.c2 import pki

    print(pki.revoke(Path(args.dir), args.name))
    return 0


def _pki_renew(args: argparse.Namespace) -> int:
    from edgecloud.c2 import pki

    print(pki.renew(Path(args.dir), args.name, args.days))
    return 0


def _pki_show(args: argparse.Namespace) -> int:
    from edgecloud.c2 import pki

    cert = pki.load_certificates(Path(args.dir) / f"{args.name}.crt")[0]
    identity = pki.identity_of(cert)
    print(
        json.dumps(
            {
                "name": identity.name,
                "role": str(identity.role),
                "privileges": sorted(identity.privileges),
                "issuer": identity.issuer,
                "serial": identity.serial,
                "not_after": cert.not_valid_after_utc.isoformat(),
            },
            indent=2,
        )
    )
    return 0


async def _serve_forever(*nodes) -> None:
    import asyncio

    try:
        await asyncio.Event().wait()
    finally:
        for node in nodes:
            await node.stop()


def _uxv(args: argparse.Namespace) -> int:
    import asyncio

    from edgecloud.c2.gateway import UxvGateway, parse_address

    _logging(not args.quiet)
    listen, vehicle = parse_address(args.listen, "--listen"), parse_address(args.mavlink, "--mavlink")

    async def main() -> None:
        gateway = UxvGateway(Path(args.pki), args.name, listen, vehicle, controller=args.controller, lease=args.lease)
        try:
            await gateway.start()
        except OSError as exc:
            raise listen_failed(exc, *listen, "--listen") from exc
        _ready(node=args.name, listen=list(gateway.address))
        await _serve_forever(gateway)

    asyncio.run(main())
    return 0


def _gcs(args: argparse.Namespace) -> int:
    import asyncio

    from edgecloud.c2.gateway import GcsGateway, parse_address

    _logging(not args.quiet)
    targets = [parse_address(a, "--connect") for a in args.connect]
    local = parse_address(args.mavlink, "--mavlink")
    if args.uxv and len(args.uxv) != len(targets):
        raise ValueError(
            f"--uxv given {len(args.uxv)} times for {len(targets)} --connect: give one per vehicle or none"
        )

    async def main() -> None:
        gateway = GcsGateway(
            Path(args.pki), args.name, targets, local, uxv_name=args.uxv or None, rekey_interval=args.rekey_interval
        )
        try:
            await gateway.start()
        except OSError as exc:
            raise listen_failed(exc, *local, "--mavlink") from exc
        _ready(node=args.name, mavlink=list(gateway.mavlink_address))
        try:
            await gateway.gave_up.wait()
        finally:
            await gateway.stop()
        reasons = "; ".join(v.gave_up for v in gateway.vehicles if v.gave_up is not None)
        raise CLIError(f"gave up: {reasons}")

    asyncio.run(main())
    return 0


def _tc_handover(args: argparse.Namespace) -> int:
    import asyncio

    from edgecloud.c2.commander import approve_handover
    from edgecloud.c2.gateway import parse_address
    from edgecloud.c2.link import LinkError

    _logging(args.verbose)
    try:
        result = asyncio.run(
            approve_handover(
                Path(args.pki),
                args.name,
                parse_address(args.connect, "--connect"),
                args.source or None,
                args.target,
                uxv_name=args.uxv,
                timeout=args.timeout,
            )
        )
    except LinkError as exc:
        raise CLIError(str(exc)) from exc
    print(
        json.dumps(
            {
                "state": result.state,
                "reason": result.reason,
                "duration_s": result.duration_s,
                "controller": result.controller,
            }
        )
    )
    return 0 if result.state == "done" else 2


def _tc_issue(args: argparse.Namespace) -> int:
    from edgecloud.c2 import pki
    from edgecloud.c2.privileges import Role

    print(
        pki.issue_to_directory(
            Path(args.pki),
            args.subject,
            Role(args.role),
            _privileges(args.privileges),
            args.days,
            issuer=args.name,
            overwrite=args.force,
        )
    )
    return 0


def _tc_revoke(args: argparse.Namespace) -> int:
    import asyncio

    from cryptography.hazmat.primitives import serialization

    from edgecloud.c2 import pki
    from edgecloud.c2.commander import push_crl
    from edgecloud.c2.gateway import parse_address

    _logging(args.verbose)
    directory = Path(args.pki)
    subject = pki.load_certificates(directory / f"{args.subject}.crt")[0]
    issuer = pki.Issuer(directory, args.name)
    if pki.identity_of(subject).issuer != pki.common_name(issuer.cert.subject):
        raise CLIError(f"{args.subject} was not issued by {args.name}: only its issuer may revoke it")
    crl = issuer.revoke(subject.serial_number)
    print(directory / "crl.pem")
    if args.push:
        pem = crl.public_bytes(serialization.Encoding.PEM) + issuer.cert.public_bytes(serialization.Encoding.PEM)
        addresses = [parse_address(a, "--push") for a in args.push]
        for line in asyncio.run(push_crl(directory, args.name, pem, addresses)):
            print(line)
    return 0


def _tc_serve(args: argparse.Namespace) -> int:
    import asyncio

    from edgecloud.c2.commander import TcService
    from edgecloud.c2.gateway import parse_address

    _logging(not args.quiet)
    listen = parse_address(args.listen, "--listen")

    async def main() -> None:
        service = TcService(Path(args.pki), args.name, listen)
        try:
            await service.start()
        except OSError as exc:
            raise listen_failed(exc, *listen, "--listen") from exc
        _ready(node=args.name, listen=list(service.address))
        await _serve_forever(service)

    asyncio.run(main())
    return 0


def _renew(args: argparse.Namespace) -> int:
    import asyncio

    from edgecloud.c2.commander import request_renewal
    from edgecloud.c2.gateway import parse_address
    from edgecloud.c2.link import LinkError

    _logging(args.verbose)
    try:
        path = asyncio.run(
            request_renewal(
                Path(args.pki), args.name, parse_address(args.tc, "--tc"), tc_name=args.tc_name, days=args.days
            )
        )
    except LinkError as exc:
        raise CLIError(str(exc)) from exc
    print(path)
    return 0


def _vehicle(args: argparse.Namespace) -> int:
    import time

    from edgecloud.c2.vehicle import SimulatedVehicle

    try:
        vehicle = SimulatedVehicle(args.mavlink, system_id=args.system_id).start()
    except OSError as exc:
        raise CLIError(f"--mavlink {args.mavlink}: {exc.strerror or exc}; pass another endpoint") from exc
    _ready(node="vehicle", port=vehicle.port)
    try:
        while True:
            time.sleep(1.0)
    finally:
        vehicle.stop()


def _bench(args: argparse.Namespace) -> int:
    import asyncio

    from edgecloud.bench.machine import LoadWatch
    from edgecloud.c2.bench import run_bench

    _logging(args.verbose)
    plot = Path(args.json).with_suffix(".png") if args.json else None
    watch = LoadWatch.begin()
    report = asyncio.run(
        run_bench(
            profiles=args.profiles.split(","),
            commands=args.commands,
            radio_commands=args.radio_commands,
            seed=args.seed,
            plot=plot,
        )
    )
    report["machine"]["load"] = watch.finish().as_dict()
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    for name, result in report["profiles"].items():
        print(json.dumps({"profile": name, **{k: v for k, v in result.items() if k != "rtts_s"}}))
    return 0


def register(commands: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    c2 = commands.add_parser("c2", help="NC2S: zero-trust command and control for unmanned vehicles")
    verbs = c2.add_subparsers(dest="c2", metavar="<verb>")
    verbs.required = True

    pki_parser = verbs.add_parser("pki", help="root CA, certificates with roles and privileges, CRL")
    pki_verbs = pki_parser.add_subparsers(dest="pki", metavar="<action>")
    pki_verbs.required = True
    p = pki_verbs.add_parser("init", help="create a root CA (DIR/ca.crt, DIR/ca.key) and its CRL")
    p.add_argument("dir")
    p.set_defaults(handler=_guarded(_pki_init))
    p = pki_verbs.add_parser("issue", help="issue DIR/NAME.crt and DIR/NAME.key")
    p.add_argument("dir")
    p.add_argument("--role", required=True, choices=["tc", "gcs", "uxv"])
    p.add_argument("--name", required=True)
    p.add_argument(
        "--privileges",
        nargs="*",
        help="tokens: telemetry, msg:<id|NAME>, cmd:<id|NAME>, msg:*, "
        "cmd:*, handover:approve, pki:issue, pki:revoke (default: the role's)",
    )
    p.add_argument("--days", type=int, default=365, help="validity")
    p.add_argument("--issuer", default="ca", help="ca (the root, default) or a TC's name")
    p.add_argument("--force", action="store_true", help="replace DIR/NAME.crt and DIR/NAME.key if they exist")
    p.set_defaults(handler=_guarded(_pki_issue))
    p = pki_verbs.add_parser("revoke", help="revoke NAME (writes DIR/crl.pem)")
    p.add_argument("dir")
    p.add_argument("name")
    p.set_defaults(handler=_guarded(_pki_revoke))
    p = pki_verbs.add_parser("renew", help="re-issue NAME with the same key and privileges")
    p.add_argument("dir")
    p.add_argument("name")
    p.add_argument("--days", type=int, default=365)
    p.set_defaults(handler=_guarded(_pki_renew))
    p = pki_verbs.add_parser("show", help="print NAME's role, privileges and validity")
    p.add_argument("dir")
    p.add_argument("name")
    p.set_defaults(handler=_guarded(_pki_show))

    p = verbs.add_parser("uxv", help="vehicle gateway: NC2S links in, authorised MAVLink to the vehicle")
    p.add_argument("--pki", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--listen", required=True, help="HOST:PORT for NC2S links")
    p.add_argument("--mavlink", required=True, help="udp:HOST:PORT of the vehicle's MAVLink endpoint")
    p.add_argument("--controller", help="the GCS in control at start (otherwise a TC assigns one)")
    p.add_argument("--lease", type=float, default=3.0, help="control lease in seconds (default 3)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(handler=_guarded(_uxv))

    p = verbs.add_parser("gcs", help="GCS gateway: a plain MAVLink UDP endpoint for local GCS software")
    p.add_argument("--pki", required=True)
    p.add_argument("--name", required=True)
    p.add_argument(
        "--connect", required=True, action="append", help="HOST:PORT of a vehicle gateway (repeat for several)"
    )
    p.add_argument("--mavlink", required=True, help="udp:HOST:PORT to listen on for local GCS software")
    p.add_argument(
        "--uxv", action="append", help="expected vehicle name, one per --connect (checked against its certificate)"
    )
    p.add_argument("--rekey-interval", type=float, default=60.0, help="seconds between key renewals")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(handler=_guarded(_gcs))

    tc = verbs.add_parser("tc", help="Tactical Commander: approve handovers, issue and revoke credentials")
    tc_verbs = tc.add_subparsers(dest="tc", metavar="<action>")
    tc_verbs.required = True
    p = tc_verbs.add_parser("handover", help="approve handing a vehicle from one GCS to another")
    p.add_argument("--pki", required=True)
    p.add_argument("--name", required=True, help="this TC")
    p.add_argument("--connect", required=True, help="HOST:PORT of the vehicle gateway")
    p.add_argument("--from", dest="source", default="", help="current controller (empty: vehicle has none)")
    p.add_argument("--to", dest="target", required=True)
    p.add_argument("--uxv", help="expected vehicle name")
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--verbose", action="store_true")
    p.set_defaults(handler=_guarded(_tc_handover))
    p = tc_verbs.add_parser("issue", help="issue a credential signed by this TC (within its privileges)")
    p.add_argument("--pki", required=True)
    p.add_argument("--name", required=True, help="this TC")
    p.add_argument("--subject", required=True)
    p.add_argument("--role", required=True, choices=["gcs", "uxv"])
    p.add_argument("--privileges", nargs="*", help="tokens as for `c2 pki issue` (default: the role's)")
    p.add_argument("--days", type=int, default=365, help="validity")
    p.add_argument("--force", action="store_true", help="replace the subject's certificate and key if they exist")
    p.set_defaults(handler=_guarded(_tc_issue))
    p = tc_verbs.add_parser("revoke", help="revoke a credential this TC issued; push the CRL to vehicles")
    p.add_argument("--pki", required=True)
    p.add_argument("--name", required=True, help="this TC")
    p.add_argument("--subject", required=True)
    p.add_argument("--push", nargs="*", default=[], help="HOST:PORT of vehicle gateways to push the CRL to")
    p.add_argument("--verbose", action="store_true")
    p.set_defaults(handler=_guarded(_tc_revoke))

    p = tc_verbs.add_parser("serve", help="listen for GCSs and UxVs asking this TC to renew their certificates")
    p.add_argument("--pki", required=True)
    p.add_argument("--name", required=True, help="this TC")
    p.add_argument("--listen", required=True, help="HOST:PORT")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(handler=_guarded(_tc_serve))

    p = verbs.add_parser("renew", help="ask a TC (c2 tc serve) to renew this node's certificate for a fresh key")
    p.add_argument("--pki", required=True)
    p.add_argument("--name", required=True, help="this GCS or UxV")
    p.add_argument("--tc", required=True, help="HOST:PORT of the TC")
    p.add_argument("--tc-name", help="expected TC name (checked against its certificate)")
    p.add_argument("--days", type=int, default=365)
    p.add_argument("--verbose", action="store_true")
    p.set_defaults(handler=_guarded(_renew))

    p = verbs.add_parser("vehicle", help="a simulated pymavlink vehicle (heartbeats, COMMAND_ACK)")
    p.add_argument("--mavlink", default="udpin:127.0.0.1:14560", help="pymavlink connection string")
    p.add_argument("--system-id", type=int, default=1)
    p.set_defaults(handler=_guarded(_vehicle))

    p = verbs.add_parser("bench", help="plain MAVLink vs NC2S through netem links (writes JSON and a PNG)")
    p.add_argument("--json", type=output_file, help="write the report here (and the figure beside it, as .png)")
    p.add_argument("--profiles", default="wifi,tactical-radio", help="netem link profiles, comma-separated")
    p.add_argument("--commands", type=int, default=200, help="commands per system on fast links")
    p.add_argument("--radio-commands", type=int, default=100, help="commands per system on slow links")
    p.add_argument("--seed", type=int, default=0, help="seed of the links' loss and jitter")
    p.add_argument("--verbose", action="store_true")
    p.set_defaults(handler=_guarded(_bench))
