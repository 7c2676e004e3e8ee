"""Process hardening at start: no core dumps, not dumpable (no ptrace by the same uid), and
optionally all memory locked so keys are never swapped out.

What Python cannot promise: strings are immutable and may be copied by the interpreter, so a
key's bytes cannot be reliably wiped from memory when it is replaced; freed memory is reused,
not zeroed. These settings keep that memory from leaving the process (core files, swap, ptrace).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import resource
from dataclasses import dataclass

from sidkeyd.errors import HardeningError

PR_SET_DUMPABLE = 4
PR_GET_DUMPABLE = 3
MCL_CURRENT, MCL_FUTURE = 1, 2


@dataclass(frozen=True)
class Hardening:
    core_dumps_disabled: bool
    dumpable: bool
    memory_locked: bool


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def is_dumpable() -> bool:
    return bool(_libc().prctl(PR_GET_DUMPABLE, 0, 0, 0, 0))


def harden_process(*, lock_memory: bool) -> Hardening:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    libc = _libc()
    if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        raise HardeningError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE, 0) failed")
    if lock_memory and libc.mlockall(MCL_CURRENT | MCL_FUTURE) != 0:
        errno = ctypes.get_errno()
        raise HardeningError(
            errno,
            "mlockall failed: raise LimitMEMLOCK (systemd) or RLIMIT_MEMLOCK, or grant "
            "CAP_IPC_LOCK, or set lock_memory = false",
        )
    return Hardening(core_dumps_disabled=True, dumpable=is_dumpable(), memory_locked=lock_memory)
