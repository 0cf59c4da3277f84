"""The agent's kubelet log endpoint over real HTTPS (the API server side is in test_node_agent.py)."""

from __future__ import annotations

import shutil
import ssl
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from volt_operator.testing.node_agent.logs import LogNotFound, LogServer, LogSource, make_serving_cert

pytestmark = [pytest.mark.timeout(60),
              pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[LogServer, Path, threading.Event]]:
    log_file = tmp_path / "main.log"
    log_file.write_bytes(b"a\nb\nc\n")
    live = threading.Event()

    def find(namespace: str, pod: str, container: str, previous: bool) -> LogSource:
        if (namespace, pod, container, previous) != ("ns", "p", "main", False):
            raise LogNotFound(f"container {container!r} in pod {namespace}/{pod} not found")
        return LogSource(log_file, live.is_set)

    cert, key = make_serving_cert(tmp_path / "pki", "127.0.0.1")
    logs = LogServer("127.0.0.1", 0, find, cert, key, client_ca=None)
    logs.start()
    try:
        yield logs, log_file, live
    finally:
        logs.stop()


def get(server: LogServer, path: str) -> bytes:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with urllib.request.urlopen(f"https://127.0.0.1:{server.port}{path}", context=context, timeout=20) as resp:
        return resp.read()


def test_log_queries(server: tuple[LogServer, Path, threading.Event]) -> None:
    logs, _, _ = server
    assert get(logs, "/containerLogs/ns/p/main") == b"a\nb\nc\n"
    assert get(logs, "/containerLogs/ns/p/main?tailLines=2") == b"b\nc\n"
    assert get(logs, "/containerLogs/ns/p/main?limitBytes=3") == b"a\nb"
    with pytest.raises(urllib.error.HTTPError) as missing:
        get(logs, "/containerLogs/ns/p/main?previous=true")
    assert missing.value.code == 404 and b"not found" in missing.value.read()
    with pytest.raises(urllib.error.HTTPError) as refused:
        get(logs, "/containerLogs/ns/p/main?timestamps=true")
    assert refused.value.code == 400 and b"timestamps" in refused.value.read()


def test_follow_streams_until_the_writer_is_gone(server: tuple[LogServer, Path, threading.Event]) -> None:
    logs, log_file, live = server
    live.set()

    def writer() -> None:
        time.sleep(0.5)
        with open(log_file, "ab") as handle:
            handle.write(b"d\n")
        time.sleep(0.5)
        live.clear()

    thread = threading.Thread(target=writer)
    thread.start()
    started = time.monotonic()
    assert get(logs, "/containerLogs/ns/p/main?follow=true") == b"a\nb\nc\nd\n"
    assert time.monotonic() - started >= 0.9
    thread.join()
