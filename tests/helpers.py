"""Helpers every test suite shares (engine, operator, e2e): free ports, waiting on a condition, a manual clock.

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


def free_port_run(count: int) -> int:
    """The first of ``count`` consecutive TCP ports on 127.0.0.1 that nothing listens on right now.

    For programs that take a base port and add an offset (the metrics server: base + local rank).
    A fixed base would not do: Linux hands out ports from 32768-60999 to outgoing connections,
    so any port there may be taken by a connection of another test at any moment.
    """
    for _ in range(100):
        held = [socket.socket()]
        try:
            held[0].bind(("127.0.0.1", 0))
            base = held[0].getsockname()[1]
            if base + count > 65536:
                continue
            for port in range(base + 1, base + count):
                sock = socket.socket()
                held.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in held:
                sock.close()
    raise AssertionError(f"found no {count} consecutive free ports on 127.0.0.1 in 100 tries")


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


class ManualClock:
    """A monotonic clock that moves only when a test moves it (``clock.now += 2``)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now
