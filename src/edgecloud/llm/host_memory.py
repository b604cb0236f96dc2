"""Host memory for CPU inference: freed activations stay in the process for the next step.

A step allocates its activations afresh (torch's CPU tensors come from glibc's ``malloc``) and frees
them when it ends. glibc returns a block above its mmap threshold to the kernel on ``free`` (the
threshold starts at 128 KiB and follows the largest block freed so far) and trims the top of its heap
once more than twice that lies free there; the next step then faults the same megabytes in again,
4 KiB at a time. A 2,048-token prefill step of a 30M Llama allocates tens of MB of activations, and
paid for it: measured on this project's AMD EPYC (2 threads, alternating runs, load ~8), its
prefill steps took 640-750 ms with glibc's defaults and 530-585 ms with the settings below (roofline
fraction of prefill 0.55-0.58 -> 0.63-0.69). CPU inference guides reach the same end by preloading
tcmalloc or jemalloc; these are glibc's own knobs, set in-process.

``keep_freed_memory`` sets them once per process: blocks up to ``MMAP_THRESHOLD`` come from the heap
(larger ones, such as a KV pool or a weight, are still mapped on their own and returned on free), and
the heap's top is trimmed only beyond ``TRIM_THRESHOLD``. The engine calls it when it runs on a CPU
(the engine core has a process of its own by default). It is a no-op off Linux/glibc, and
``EDGECLOUD_MALLOC_TUNE=0`` turns it off.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys

log = logging.getLogger(__name__)

MMAP_THRESHOLD = 64 << 20
TRIM_THRESHOLD = 512 << 20
TOP_PAD = 64 << 20
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3  # malloc.h

_done = False


def keep_freed_memory() -> bool:
    """Set glibc's thresholds for this process (once); True where they are in force."""
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux") or os.environ.get("EDGECLOUD_MALLOC_TUNE", "1") == "0":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = all(mallopt(option, value) == 1 for option, value in (
        (_M_MMAP_THRESHOLD, MMAP_THRESHOLD), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD), (_M_TOP_PAD, TOP_PAD)))
    if not ok:
        log.debug("mallopt refused a setting; glibc's defaults stay")
    _done = ok
    return ok
