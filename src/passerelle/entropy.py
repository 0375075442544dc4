"""Random bytes for identifiers, drawn from the kernel a page at a time.

Each request needs a request id and one prediction id per row. Asking the kernel for eight
bytes each time is cheap in itself, but ``os.urandom`` releases the GIL around the system
call, and under load the event loop then waits behind the model and log threads to take it
back, up to the interpreter's switch interval (5 ms) per call. Drawing 4 KiB at once makes
that one call per few hundred identifiers; the bytes are as good as ``os.urandom``'s.
"""

from __future__ import annotations

import os
import threading

_PAGE = 4096


class _Pool:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buffer = b""
        self._offset = 0
        # A forked child must not hand out the bytes its parent hands out too.
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._lock = threading.Lock()
        self._buffer, self._offset = b"", 0

    def take(self, n: int) -> bytes:
        if n > _PAGE:
            return os.urandom(n)
        with self._lock:
            start = self._offset
            if start + n > len(self._buffer):
                self._buffer, start = os.urandom(_PAGE), 0
            self._offset = start + n
            return self._buffer[start : start + n]


_pool = _Pool()


def random_bytes(n: int) -> bytes:
    """``n`` random bytes from the kernel's generator, never handed out twice in any process."""
    return _pool.take(n)


def random_hex(n_bytes: int) -> str:
    """``2 * n_bytes`` random hexadecimal digits."""
    return _pool.take(n_bytes).hex()
