"""Roles and privileges of NC2S principals (NC2S, arXiv 2511.21936, "roles and privileges").

Every certificate names one role — Tactical Commander (``tc``), Ground Control Station (``gcs``)
or unmanned vehicle (``uxv``) — and a set of privilege tokens. Tokens are plain strings so they
can be written on a command line, stored in a certificate extension and compared exactly:

``telemetry``           may receive a vehicle's telemetry
``msg:<id>``            may send MAVLink message ``<id>`` to a vehicle it controls
``cmd:<id>``            may send COMMAND_LONG / COMMAND_INT with command ``<id>`` to a vehicle it controls
``msg:*`` / ``cmd:*``   any message / any command
``handover:approve``    may approve a control handover (TCs)
``pki:issue``           may issue and renew credentials (TCs)
``pki:revoke``          may revoke credentials it issued (TCs)

Message and command ids may be given by MAVLink name (``cmd:MAV_CMD_COMPONENT_ARM_DISARM``,
``msg:SET_MODE``); they are stored as numbers so the check at the vehicle is an integer lookup.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

from pymavlink.dialects.v20 import ardupilotmega as mavlink


class Role(enum.StrEnum):
    TC = "tc"
    GCS = "gcs"
    UXV = "uxv"


TELEMETRY = "telemetry"
HANDOVER_APPROVE = "handover:approve"
PKI_ISSUE = "pki:issue"
PKI_REVOKE = "pki:revoke"
ANY_MESSAGE = "msg:*"
ANY_COMMAND = "cmd:*"
_FIXED = frozenset({TELEMETRY, HANDOVER_APPROVE, PKI_ISSUE, PKI_REVOKE, ANY_MESSAGE, ANY_COMMAND})

DEFAULT_PRIVILEGES: dict[Role, frozenset[str]] = {
    Role.TC: frozenset({TELEMETRY, HANDOVER_APPROVE, PKI_ISSUE, PKI_REVOKE, ANY_MESSAGE, ANY_COMMAND}),
    Role.GCS: frozenset({TELEMETRY, ANY_MESSAGE, ANY_COMMAND}),
    Role.UXV: frozenset({TELEMETRY}),
}

COMMAND_MESSAGE_IDS = frozenset({mavlink.MAVLINK_MSG_ID_COMMAND_LONG, mavlink.MAVLINK_MSG_ID_COMMAND_INT})
_MAX_ID = 2**24 - 1  # MAVLink 2 message ids are 24 bits; command ids fit as well


class PrivilegeError(ValueError):
    """A privilege token that cannot be parsed, or one an issuer may not grant."""


def _resolve(kind: str, value: str) -> str:
    if value == "*" or value.isdigit():
        if value != "*" and not 0 <= int(value) <= _MAX_ID:
            raise PrivilegeError(f"privilege {kind}:{value}: id must be in 0..{_MAX_ID}")
        return f"{kind}:{int(value) if value != '*' else '*'}"
    if kind == "msg":
        number = getattr(mavlink, f"MAVLINK_MSG_ID_{value.upper()}", None)
    else:
        name = value.upper() if value.upper().startswith("MAV_CMD_") else f"MAV_CMD_{value.upper()}"
        number = getattr(mavlink, name, None)
    if not isinstance(number, int):
        raise PrivilegeError(f"privilege {kind}:{value}: unknown MAVLink {'message' if kind == 'msg' else 'command'}")
    return f"{kind}:{number}"


def parse_privilege(token: str) -> str:
    """Normalise one token (MAVLink names become numbers); raise PrivilegeError naming it."""
    token = token.strip()
    if token in _FIXED:
        return token
    kind, sep, value = token.partition(":")
    if sep and kind in ("msg", "cmd") and value:
        return _resolve(kind, value)
    raise PrivilegeError(f"privilege {token!r}: expected one of {sorted(_FIXED)}, msg:<id|NAME> or cmd:<id|NAME>")


def parse_privileges(tokens: Iterable[str]) -> frozenset[str]:
    return frozenset(parse_privilege(t) for token in tokens for t in token.split(",") if t.strip())


def holds(privileges: frozenset[str], wanted: str) -> bool:
    """Whether ``privileges`` includes ``wanted`` directly or through a ``msg:*``/``cmd:*`` wildcard."""
    if wanted in privileges:
        return True
    kind, _, _ = wanted.partition(":")
    return kind in ("msg", "cmd") and f"{kind}:*" in privileges


def not_covered(granted: frozenset[str], held: frozenset[str]) -> frozenset[str]:
    """The tokens of ``granted`` that ``held`` does not include: an issuer may grant only what it holds."""
    return frozenset(p for p in granted if not holds(held, p))


def required_privilege(message_id: int, command_id: int | None) -> str:
    """The privilege a controller needs to send this MAVLink message to a vehicle."""
    if message_id in COMMAND_MESSAGE_IDS and command_id is not None:
        return f"cmd:{command_id}"
    return f"msg:{message_id}"
