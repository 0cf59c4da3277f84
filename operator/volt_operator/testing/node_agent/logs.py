"""The kubelet's log endpoint, so `kubectl logs` works against local pods.

kubectl asks the API server for pods/log; the API server connects over HTTPS
to the pod's node at Node.status.addresses (InternalIP) and
daemonEndpoints.kubeletEndpoint.Port and GETs
`/containerLogs/<namespace>/<pod>/<container>?follow=&tailLines=&limitBytes=&previous=`.
The serving certificate is self-signed per agent run (the API server does not
verify kubelet certificates unless --kubelet-certificate-authority is set);
with --client-ca-file the endpoint requires the API server's client
certificate, otherwise it is open on the bridge address, which only this
machine can reach. Timestamps are not recorded, so `timestamps`, `sinceTime`
and `sinceSeconds` are refused with a clear message.
"""

from __future__ import annotations

import logging
import os
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable
from urllib.parse import parse_qs, unquote, urlparse

log = logging.getLogger(__name__)

CHUNK = 64 * 1024


@dataclass(frozen=True)
class LogSource:
    path: Path
    is_live: Callable[[], bool]  # True while the process writing `path` may still write


class LogNotFound(LookupError):
    pass


# find(namespace, pod, container, previous) -> LogSource, raises LogNotFound
LogFinder = Callable[[str, str, str, bool], LogSource]


def tail_offset(path: Path, lines: int) -> int:
    """The byte offset where the last `lines` lines of `path` start."""
    if lines <= 0:
        return path.stat().st_size
    size = path.stat().st_size
    with open(path, "rb") as handle:
        position, newlines, trailing = size, 0, True
        while position > 0:
            step = min(CHUNK, position)
            position -= step
            handle.seek(position)
            block = handle.read(step)
            for index in range(len(block) - 1, -1, -1):
                if block[index] == 0x0A:
                    if trailing and position + index == size - 1:
                        continue  # the final newline ends the last line
                    newlines += 1
                    if newlines == lines:
                        return position + index + 1
                trailing = False
    return 0


def make_serving_cert(directory: Path, address: str) -> tuple[Path, Path]:
    """A self-signed serving certificate for `address`, made with the openssl CLI."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "kubelet.crt", directory / "kubelet.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "365",
         "-subj", "/CN=volt-local-node-agent", "-addext", f"subjectAltName=IP:{address}",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True)
    os.chmod(key, 0o600)
    return cert, key


class _Handler(BaseHTTPRequestHandler):
    server: "LogServer"
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (stdlib name)
        log.debug("log endpoint: " + format, *args)

    def _error(self, status: HTTPStatus, message: str) -> None:
        body = (message + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 (stdlib name)
        url = urlparse(self.path)
        if url.path == "/healthz":
            self._error(HTTPStatus.OK, "ok")
            return
        parts = [unquote(p) for p in url.path.split("/") if p]
        if len(parts) != 4 or parts[0] != "containerLogs":
            self._error(HTTPStatus.NOT_FOUND, f"no such endpoint {url.path}")
            return
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        for unsupported in ("timestamps", "sinceTime", "sinceSeconds"):
            if unsupported in query and query[unsupported] not in ("", "false", "0"):
                self._error(HTTPStatus.BAD_REQUEST, f"{unsupported}: the volt local node agent does "
                            "not record log timestamps")
                return
        try:
            tail = int(query["tailLines"]) if "tailLines" in query else None
            limit = int(query["limitBytes"]) if "limitBytes" in query else None
        except ValueError:
            self._error(HTTPStatus.BAD_REQUEST, "tailLines and limitBytes must be integers")
            return
        follow = query.get("follow") == "true"
        previous = query.get("previous") == "true"
        try:
            source = self.server.find(parts[1], parts[2], parts[3], previous)
        except LogNotFound as error:
            self._error(HTTPStatus.NOT_FOUND, str(error))
            return
        self._stream(source, tail, limit, follow)

    def _stream(self, source: LogSource, tail: int | None, limit: int | None, follow: bool) -> None:
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        remaining = limit if limit is not None else -1
        offset = tail_offset(source.path, tail) if tail is not None else 0
        try:
            with open(source.path, "rb") as handle:
                handle.seek(offset)
                while remaining != 0:
                    block = handle.read(CHUNK if remaining < 0 else min(CHUNK, remaining))
                    if block:
                        self._chunk(block)
                        remaining -= len(block) if remaining > 0 else 0
                        continue
                    if not follow or self.server.stopping.is_set():
                        break
                    if not source.is_live():
                        if not handle.read(1):
                            break
                        handle.seek(-1, 1)
                        continue
                    time.sleep(0.2)
            self._chunk(b"")
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            pass

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()


class LogServer(ThreadingHTTPServer):
    """HTTPS server for /containerLogs, on an ephemeral port of `address`."""

    daemon_threads = True

    def __init__(self, address: str, port: int, find: LogFinder, cert: Path, key: Path,
                 client_ca: Path | None) -> None:
        super().__init__((address, port), _Handler)
        self.find = find
        self.stopping = threading.Event()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        if client_ca is not None:
            context.load_verify_locations(cafile=str(client_ca))
            context.verify_mode = ssl.CERT_REQUIRED
        # The handshake then happens in the request's thread, not in the accept loop.
        self.socket = context.wrap_socket(self.socket, server_side=True,
                                          do_handshake_on_connect=False)
        self._thread = threading.Thread(target=self.serve_forever, name="kubelet-logs", daemon=True)

    @property
    def port(self) -> int:
        return self.server_address[1]

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.shutdown()
        self.server_close()
