"""Helpers every test suite shares (engine, operator, e2e): free ports and waiting on a condition.

Importable as ``helpers`` from any test (pytest puts ``tests/`` on ``sys.path`` through its
conftest.py).
"""
from __future__ import annotations

import socket
import time
from typing import Any, Callable


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """``check()``'s first truthy result, checked every ``interval`` s; fails naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = check()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")
        time.sleep(interval)
