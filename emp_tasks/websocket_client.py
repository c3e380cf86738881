"""simple-websocket's client without its lost-first-frames race.

simple-websocket 1.1's ``Client`` reads the handshake reply with one ``recv``
and takes only its first event. Frames the server sent right after accepting
(ComfyUI's ``status``, the API's ``connection_established``, an error and a
close for a refused resume id) that came in the same read wait in wsproto's
buffer until more bytes arrive; a server that then closes leaves them unread,
and the client reports a bare 1005. A loaded machine makes that one read
likelier. This client delivers those frames before it reads again.
"""

from __future__ import annotations

from simple_websocket import Client


class WebSocketClient(Client):
    """``simple_websocket.Client`` that also delivers frames read with the handshake reply."""

    def _thread(self) -> None:
        # Messages go to the input buffer; a close frame ends the connection as usual, so
        # receive() returns what came before it, then raises ConnectionClosed.
        self.connected = self._handle_events()
        super()._thread()
