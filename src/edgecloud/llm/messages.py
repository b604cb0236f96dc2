"""Messages between a front end and an engine core in another process (or a Ray actor).

One msgpack frame per message (``msgspec``), a tagged union each way. Tensors (KV blocks in
``export_blocks``/``import_blocks``) travel inside as a msgpack extension: dtype, shape and raw
bytes, so no pickle crosses the boundary.
"""

from __future__ import annotations

from typing import Any

import msgspec
import torch

from edgecloud.llm.engine_core import EngineInfo
from edgecloud.llm.outputs import EngineCoreOutputs
from edgecloud.llm.request import EngineCoreRequest

_TENSOR_EXT = 1


class AddRequests(msgspec.Struct, tag="add"):
    requests: list[EngineCoreRequest]


class AbortRequests(msgspec.Struct, tag="abort"):
    request_ids: list[str]


class Control(msgspec.Struct, tag="control"):
    call_id: int
    op: str
    args: dict[str, Any] = {}


class Shutdown(msgspec.Struct, tag="shutdown"):
    pass


class Ready(msgspec.Struct, tag="ready"):
    info: EngineInfo


class Failed(msgspec.Struct, tag="failed"):
    """The core could not start (bad model, bad option): the message says why."""

    message: str
    param: str | None = None
    invalid: bool = False


class Outputs(msgspec.Struct, tag="outputs"):
    batch: EngineCoreOutputs


class ControlReply(msgspec.Struct, tag="reply"):
    call_id: int
    result: Any = None
    error: str | None = None
    error_param: str | None = None
    invalid: bool = False


ToCore = AddRequests | AbortRequests | Control | Shutdown
FromCore = Ready | Failed | Outputs | ControlReply


def _enc_hook(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        # a view of the tensor's bytes: msgspec copies it once, into the frame (no ``tobytes``)
        raw = memoryview(t.reshape(-1).view(torch.uint8).numpy()) if t.numel() else b""
        return msgspec.msgpack.Ext(_TENSOR_EXT, msgspec.msgpack.encode((str(t.dtype).removeprefix("torch."),
                                                                        list(t.shape), raw)))
    raise NotImplementedError(f"cannot send a {type(obj).__name__} to the engine core")


def _ext_hook(code: int, data: memoryview) -> Any:
    if code != _TENSOR_EXT:
        raise ValueError(f"unknown msgpack extension {code}")
    dtype_name, shape, raw = _tensor_header.decode(data)  # ``raw``: a view into the frame, not a copy
    dtype = getattr(torch, dtype_name)
    if not len(raw):
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(dtype).reshape(shape)


_tensor_header = msgspec.msgpack.Decoder(tuple[str, list[int], memoryview])
_encoder = msgspec.msgpack.Encoder(enc_hook=_enc_hook)
_to_core = msgspec.msgpack.Decoder(ToCore, ext_hook=_ext_hook)
_from_core = msgspec.msgpack.Decoder(FromCore, ext_hook=_ext_hook)


def encode(message: ToCore | FromCore) -> bytes:
    return _encoder.encode(message)


def decode_to_core(data: bytes) -> ToCore:
    return _to_core.decode(data)


def decode_from_core(data: bytes) -> FromCore:
    return _from_core.decode(data)
