"""CPU kernels in C, built on this machine at first use and called through ctypes.

Three kernels use this: the paged decode attention below, and through ``compiled`` the Q4_1
weight-only matmul of ``edgecloud.llm.quant.linear`` (``llm/quant/csrc/q4_1_matmul.c``) and the
one-token decoder stack built on it (``llm/quant/decode_stack.py``).

The paged decode attention kernel (``csrc/paged_decode.c``) reads K and V in place through the
block table: the torch path gathers each sequence's blocks into a contiguous copy first and then
runs SDPA over it, reading the context from memory three times (gather read, gather write, SDPA
read) where the kernel reads it once.

Build: ``cc -O3 -march=native -fopenmp -shared`` into the cache (``$EDGECLOUD_CACHE_DIR`` or
``~/.cache/edgecloud``)/``kernels``, keyed by the source, the compiler and this CPU, and loaded after
torch: the library's ``libgomp.so.1`` resolves to the OpenMP runtime torch has already loaded, so
both share one thread pool. Without a C compiler, or with ``EDGECLOUD_CPU_KERNELS=0``, the engine
keeps the torch path (a warning says so once); the results agree to float32 rounding.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from functools import cache
from importlib import resources
from pathlib import Path

import torch

from edgecloud.cache import cache_dir

log = logging.getLogger(__name__)

SOURCE = "paged_decode.c"
_ARGTYPES = [
    ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,  # q, k_cache, v_cache
    ctypes.c_void_p, ctypes.c_int64,  # block_tables, table_stride
    ctypes.c_void_p, ctypes.c_void_p,  # context_lens, out
    ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,  # seqs, q heads, kv heads, head dim
    ctypes.c_int64, ctypes.c_int64, ctypes.c_float, ctypes.c_int,  # block size, max context, scale, threads
]


def enabled() -> bool:
    return os.environ.get("EDGECLOUD_CPU_KERNELS", "1") != "0"


def _cpu_id() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "flags")):
                return line
    except OSError:
        pass
    return platform.processor()


def _build(name: str, source: str, compiler: str) -> Path:
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=True).stdout
    key = hashlib.sha256("\n".join((source, version, _cpu_id())).encode()).hexdigest()[:20]
    target = cache_dir("kernels") / f"{Path(name).stem}-{key}.so"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        src, lib = Path(tmp) / name, Path(tmp) / target.name
        src.write_text(source)
        subprocess.run(
            [compiler, "-O3", "-march=native", "-fopenmp", "-fPIC", "-shared", "-std=gnu11", str(src),
             "-o", str(lib), "-lm"],
            capture_output=True, text=True, check=True, timeout=120,
        )
        lib.replace(target)  # atomic: a concurrent build's copy is as good as ours
    return target


@cache
def compiled(
    package: str, name: str | tuple[str, ...], symbol: str, argtypes: tuple[object, ...], what: str
) -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    """``symbol`` from ``package``'s ``csrc/<name>``, built for this machine; None (no compiler, build
    failed, or disabled: a warning says so once) and the caller keeps its torch path. ``what``
    names the kernel in that warning. Several names are joined, in order, into one translation unit
    (a later file uses the earlier ones' static functions); the library is named after the last."""
    if not enabled():
        return None
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        log.warning("no C compiler (cc/gcc) found: %s uses the slower torch path", what)
        return None
    names = (name,) if isinstance(name, str) else name
    source = "\n".join(resources.files(package).joinpath("csrc", n).read_text() for n in names)
    try:
        path = _build(names[-1], source, compiler)
        function = getattr(ctypes.CDLL(str(path)), symbol)
    except (OSError, AttributeError, subprocess.SubprocessError) as error:
        detail = getattr(error, "stderr", "") or error
        log.warning("building the kernel for %s failed (%s); using the torch path", what, detail)
        return None
    function.argtypes = list(argtypes)
    function.restype = ctypes.c_int
    return function


def paged_decode_f32() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    """The compiled decode-attention kernel, or None — the caller falls back."""
    return compiled("edgecloud.llm.attention", SOURCE, "edgecloud_paged_decode_f32", tuple(_ARGTYPES),
                    "CPU decode attention")


def paged_decode(
    query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_table: torch.Tensor,
    context_lens: torch.Tensor, max_context: int, scale: float,
) -> torch.Tensor | None:
    """Decode attention through the kernel; None where it does not apply (not float32 on a CPU,
    or no kernel), so the caller runs the torch path. ``block_table``: ``[num_seqs, width]`` int64,
    ``context_lens``: ``[num_seqs]`` int64, both contiguous on the CPU."""
    if query.device.type != "cpu" or query.dtype != torch.float32 or k_cache.dtype != torch.float32:
        return None
    function = paged_decode_f32()
    if function is None:
        return None
    query = query.contiguous()
    num_seqs, num_q_heads, head_dim = query.shape
    _, block_size, num_kv_heads, _ = k_cache.shape
    if not (k_cache.is_contiguous() and v_cache.is_contiguous()) or num_q_heads % num_kv_heads:
        return None
    out = torch.empty_like(query)
    status = function(
        query.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(), block_table.data_ptr(), block_table.shape[1],
        context_lens.data_ptr(), out.data_ptr(), num_seqs, num_q_heads, num_kv_heads, head_dim, block_size,
        max_context, scale, torch.get_num_threads(),
    )
    if status == -2:  # a shape the kernel does not take (head_dim not a multiple of 8, ...)
        return None
    if status != 0:
        raise MemoryError("CPU decode-attention kernel could not allocate its scratch buffers")
    return out
