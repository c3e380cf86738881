"""The tests' WebSocket client: the project's (see ``emp_tasks.websocket_client``)."""

from __future__ import annotations

from simple_websocket import ConnectionClosed, ConnectionError

from emp_tasks.websocket_client import WebSocketClient as Client

__all__ = ["Client", "ConnectionClosed", "ConnectionError"]
