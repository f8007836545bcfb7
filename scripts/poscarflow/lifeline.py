"""Imported first by the pool's fork server: the kernel kills it when the pool server dies.

The fork server imports quacc (seconds) before it would notice that the server is gone;
with this it dies at once, and its pool processes with it (see pool.py). Linux only;
elsewhere nothing happens.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Have the kernel send SIGKILL to this process when its parent dies."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:  # the parent died before prctl
        os._exit(1)


die_with_parent()
