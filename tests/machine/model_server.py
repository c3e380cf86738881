"""A real HTTP server of generated model files, for download tests.

Serves ``files`` (name -> bytes) at ``/<name>`` with ``Range: bytes=N-``
support. It can cut the next responses short (``cut_next`` responses stop
after ``cut_at`` bytes and drop the connection), ignore Range headers, serve
wrong bytes for some names, go slowly (``chunk_delay`` seconds per ``chunk``
bytes), redirect some names (``redirects``: name -> Location), answer the
next requests with given statuses (``statuses``, e.g. 429), announce a false
Content-Length (``claimed_length``: name -> bytes) and gzip some names' bodies
for clients that accept it (``gzipped``) and answer a Range request with the
whole file as a 206 (``range_from_zero``), and answer 401 without this basic
authorization header value (``authorization``). It listens on ``bind`` (127.0.0.1;
``url`` names that address) and ``port`` (0: a free one). Every request is recorded.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_RANGE = re.compile(r"^bytes=(\d+)-$")


@dataclass
class Served:
    name: str
    range: str | None
    status: int


@dataclass
class ModelServer:
    files: dict[str, bytes] = field(default_factory=dict)
    cut_next: int = 0
    cut_at: int = 0
    ignore_range: bool = False
    corrupt: set[str] = field(default_factory=set)
    chunk: int = 16 * 1024
    chunk_delay: float = 0.0
    redirects: dict[str, str] = field(default_factory=dict)
    statuses: list[int] = field(default_factory=list)
    claimed_length: dict[str, int | str] = field(default_factory=dict)
    gzipped: set[str] = field(default_factory=set)
    range_from_zero: bool = False
    bind: str = "127.0.0.1"
    port: int = 0
    authorization: str | None = None
    served: list[Served] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None

    def add(self, name: str, size: int) -> dict[str, Any]:
        """A new random file; returns its catalog entry body {url, size, sha256}."""
        data = os.urandom(size)
        self.files[name] = data
        return {"url": f"{self.url}/{name}", "size": size,
                "sha256": hashlib.sha256(data).hexdigest()}

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def requests_for(self, name: str) -> list[Served]:
        with self.lock:
            return [s for s in self.served if s.name == name]

    def start(self) -> ModelServer:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                name = self.path.lstrip("/")
                with owner.lock:
                    status = owner.statuses.pop(0) if owner.statuses else None
                if status is None and name in owner.redirects:
                    status = 302
                if status is not None:
                    self._record(name, status, self.headers.get("Range"))
                    self.send_response(status)
                    if status == 302:
                        self.send_header("Location", owner.redirects[name])
                    self.send_header("Retry-After", "0")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = owner.files.get(name)
                if owner.authorization and name not in owner.redirects and self.headers.get(
                        "Authorization") != owner.authorization:
                    self._record(name, 401)
                    self.send_response(401)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if data is None:
                    self._record(name, 404)
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if name in owner.corrupt:
                    data = bytes(b ^ 0xFF for b in data)
                wanted = self.headers.get("Range")
                match = _RANGE.match(wanted or "")
                start = int(match[1]) if match and not owner.ignore_range else 0
                if owner.range_from_zero:
                    start = 0
                status = 206 if match and not owner.ignore_range else 200
                if start >= len(data) and status == 206:
                    self._record(name, 416, wanted)
                    self.send_response(416)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = data[start:]
                zipped = name in owner.gzipped and "gzip" in self.headers.get(
                    "Accept-Encoding", "")
                if zipped:
                    body = gzip.compress(body)
                with owner.lock:
                    cutting = owner.cut_next > 0
                    if cutting:
                        owner.cut_next -= 1
                cut = cutting or name in owner.claimed_length  # drop the connection after
                self._record(name, status, wanted)
                self.send_response(status)
                self.send_header("Content-Length",
                                 str(owner.claimed_length.get(name, len(body))))
                if zipped:
                    self.send_header("Content-Encoding", "gzip")
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                limit = owner.cut_at if cutting else len(body)
                sent = 0
                try:
                    while sent < min(limit, len(body)):
                        piece = body[sent:min(sent + owner.chunk, limit)]
                        self.wfile.write(piece)
                        self.wfile.flush()
                        sent += len(piece)
                        if owner.chunk_delay:
                            threading.Event().wait(owner.chunk_delay)
                except (BrokenPipeError, ConnectionResetError):
                    return
                if cut:
                    self.close_connection = True
                    self.connection.shutdown(2)

            def _record(self, name: str, status: int, wanted: str | None = None) -> None:
                with owner.lock:
                    owner.served.append(Served(name, wanted, status))

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((self.bind, self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
