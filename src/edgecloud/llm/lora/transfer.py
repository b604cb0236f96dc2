"""An adapter handed from one engine core to another on the same host through shared memory.

The relay (``export_lora_adapter`` with its tensors in the reply, then ``import_lora_adapter`` with
them in the call) carries 15 MB of a rank-128 adapter through the front end: encoded by the peer,
decoded and encoded again by the front end, decoded by the importer. On one host the cores can
hand it over directly, as LoRAServe's GPUDirect RDMA reads a peer GPU's memory without a host
relay: the exporting core writes its tensors once into a new POSIX shared-memory file (``/dev/shm``),
the front end passes only its name and layout (a few kB) to the importing core, which maps it,
unlinks the name (from then on it alone holds the memory, freed when its tensors go) and keeps its
tensors as views of the mapping — no copy on the importing side.

A handle names only files this module creates (``edgecloud-lora-`` and 32 hex digits), and its
layout is checked against the file's size, so a control call cannot map an arbitrary file. The
front end's ``fetch_adapter`` discards the file when the import fails, so none is left behind.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import re
import uuid
from pathlib import Path
from typing import Any

import torch

from edgecloud.llm.errors import InvalidRequestError

SHM_DIR = Path("/dev/shm")
SHM_PREFIX = "edgecloud-lora-"
_SHM_NAME = re.compile(r"edgecloud-lora-[0-9a-f]{32}")
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_ALIGN = 64

TRANSPORTS = ("inline", "shm")


def shm_available() -> bool:
    return SHM_DIR.is_dir() and os.access(SHM_DIR, os.W_OK)


def _bad(message: str) -> InvalidRequestError:
    return InvalidRequestError(f"shared-memory adapter handle: {message}", "shm")


def export_to_shm(tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Writes ``tensors`` into a new shared-memory file (one ``pwrite`` each, 64-byte aligned) and
    returns its handle: ``{"name", "size", "layout": [[tensor name, dtype, shape, offset], ...]}``."""
    parts, layout, offset = [], [], 0
    for key, tensor in tensors.items():
        t = tensor.detach().cpu().contiguous()
        dtype = str(t.dtype).removeprefix("torch.")
        if dtype not in _DTYPES:
            raise _bad(f"tensor {key} has dtype {dtype}, not one of {sorted(_DTYPES)}")
        offset = -(-offset // _ALIGN) * _ALIGN
        layout.append([key, dtype, list(t.shape), offset])
        parts.append((t, offset))
        offset += t.numel() * t.element_size()
    name = SHM_PREFIX + uuid.uuid4().hex
    fd = os.open(SHM_DIR / name, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.ftruncate(fd, max(offset, 1))
        for t, at in parts:
            if t.numel():
                view = memoryview(t.reshape(-1).view(torch.uint8).numpy())
                written = 0
                while written < len(view):
                    written += os.pwrite(fd, view[written:], at + written)
    except BaseException:
        discard_shm(name)
        raise
    finally:
        os.close(fd)
    return {"name": name, "size": max(offset, 1), "layout": layout}


def import_from_shm(handle: Any) -> dict[str, torch.Tensor]:
    """The tensors of a handle from ``export_to_shm``, as views of the file mapped copy-on-write;
    the file's name is removed at once (the mapping keeps its memory while any tensor uses it).
    Raises ``InvalidRequestError`` for a handle that is malformed or does not fit its file."""
    if not isinstance(handle, dict) or not isinstance(handle.get("name"), str) or not isinstance(
            handle.get("layout"), list):
        raise _bad("expected {'name', 'size', 'layout'}")
    name = handle["name"]
    if not _SHM_NAME.fullmatch(name):
        raise _bad(f"{name!r} is not a name this engine creates")
    try:
        fd = os.open(SHM_DIR / name, os.O_RDONLY)
    except FileNotFoundError:
        raise _bad(f"{name} does not exist (already imported, or the exporting core is on another host)") from None
    try:
        size = os.fstat(fd).st_size
        mapping = mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(fd)
        discard_shm(name)
    tensors: dict[str, torch.Tensor] = {}
    for entry in handle["layout"]:
        if not (isinstance(entry, list | tuple) and len(entry) == 4 and isinstance(entry[0], str)
                and entry[1] in _DTYPES and isinstance(entry[2], list | tuple)
                and all(isinstance(d, int) and d >= 0 for d in entry[2]) and isinstance(entry[3], int)):
            raise _bad(f"bad layout entry {entry!r}")
        key, dtype_name, shape, offset = entry
        dtype = _DTYPES[dtype_name]
        count = 1
        for d in shape:
            count *= d
        if offset < 0 or offset + count * dtype.itemsize > size:
            raise _bad(f"tensor {key} ({dtype_name} {list(shape)} at {offset}) lies outside the {size}-byte file")
        tensors[key] = (torch.frombuffer(mapping, dtype=dtype, count=count, offset=offset).view(*shape) if count
                        else torch.empty(shape, dtype=dtype))
    return tensors


def discard_shm(name: str) -> None:
    """Removes a handle's file if it is still there (an import that failed or never came)."""
    if _SHM_NAME.fullmatch(name):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(SHM_DIR / name)


async def fetch_adapter(src: Any, dst: Any, name: str, as_name: str | None = None, transport: str = "shm",
                        pinned: bool = False) -> None:
    """Copies adapter ``name`` from core ``src`` to core ``dst`` (anything with an async
    ``control(op, **args)``: ``AsyncEngine``, an ``EngineClient``), registered there as ``as_name``.
    ``transport``: ``"shm"`` (both cores on this host) or ``"inline"`` (tensors relayed in the
    messages, any two cores)."""
    if transport not in TRANSPORTS:
        raise ValueError(f"transport must be one of {TRANSPORTS}, got {transport!r}")
    exported = await src.control("export_lora_adapter", lora_name=name, transport=transport)
    handle = exported.get("shm")
    try:
        await dst.control("import_lora_adapter", lora_name=as_name or name, config=exported["config"],
                          digest=exported["digest"], tensors=exported.get("tensors"), shm=handle, pinned=pinned)
    finally:
        if handle is not None:
            discard_shm(handle["name"])
