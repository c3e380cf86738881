"""A TCP proxy between a process under test and the test's Redis, with a hook on each
direction: tests that lose, delay or hang one command at the wire (a lost reply, a
Redis that hung just then) share the relaying and change only what the hooks do."""

from __future__ import annotations

import socket
import threading
from typing import Any

#: One connection's own state, shared by its two hooks (e.g. "cut this reply").
State = dict[str, Any]


class RedisProxy:
    """Relays each connection to ``url`` to its own connection to Redis on ``port``, a
    thread each way; both ends are closed once Redis or a reply hook ends it. Subclasses
    override ``request`` and ``reply``; ``lock`` guards what the hooks share.
    ``closed_by_reply_hook`` counts connections a reply hook ended, once both ends are
    closed (a test asserting a cut then knows the client really lost its reply)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"redis://127.0.0.1:{self.listener.getsockname()[1]}/0"
        self.lock = threading.Lock()
        self.closed_by_reply_hook = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def request(self, data: bytes, state: State) -> bytes:
        """What of a chunk the client sent goes on to Redis (b"": nothing)."""
        return data

    def reply(self, data: bytes, state: State) -> bytes | None:
        """What of a chunk Redis sent goes back to the client (None: close both ends)."""
        return data

    def close(self) -> None:
        """Stop accepting: a connection after this is refused (a close alone leaves a
        listener that another thread is blocked accepting on listening, on Linux)."""
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                inner, _ = self.listener.accept()
            except OSError:
                return
            try:
                outer = socket.create_connection(("127.0.0.1", self.port))
            except OSError:  # Redis is down: the client finds its connection closed
                inner.close()
                continue
            state: State = {}
            threading.Thread(target=self._requests, args=(inner, outer, state),
                             daemon=True).start()
            threading.Thread(target=self._replies, args=(outer, inner, state),
                             daemon=True).start()

    def _requests(self, inner: socket.socket, outer: socket.socket, state: State) -> None:
        try:
            while data := inner.recv(65536):
                if forward := self.request(data, state):
                    outer.sendall(forward)
            outer.shutdown(socket.SHUT_WR)  # the client hung up: Redis reads that last
        except OSError:
            pass

    def _replies(self, outer: socket.socket, inner: socket.socket, state: State) -> None:
        cut = False
        try:
            while data := outer.recv(65536):
                forward = self.reply(data, state)
                if forward is None:
                    cut = True
                    break
                inner.sendall(forward)
        except OSError:
            pass
        for end in (inner, outer):
            try:
                end.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            end.close()
        if cut:
            with self.lock:
                self.closed_by_reply_hook += 1
