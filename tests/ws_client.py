"""The tests' WebSocket client: simple_websocket's, without its lost-first-frames race.

simple_websocket 1.1's ``Client`` reads the handshake answer with one
``recv`` and takes only its first event. Frames the server sent right after
accepting (``connection_established``, or an error and a close for a refused
resume id) that came in the same read stay in wsproto's buffer until more
bytes arrive; a server that then closes leaves them unread, and the client
reports 1005 without ever showing them. A loaded machine makes that one read
likelier; a browser has no such race. This client handles those frames first.
"""

from __future__ import annotations

from simple_websocket import Client as _Client
from simple_websocket import ConnectionClosed, ConnectionError

__all__ = ["Client", "ConnectionClosed", "ConnectionError"]


class Client(_Client):
    """``simple_websocket.Client`` that delivers frames read with the handshake answer."""

    def _thread(self) -> None:
        # Messages go to the input buffer; a close frame ends the connection as usual.
        self.connected = self._handle_events()
        super()._thread()
