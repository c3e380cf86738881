"""``comfyui-remote``: the ComfyUI connector against an external server over the internet.

Same protocol and job handling as ``comfyui``; what differs is the setting:

- ``url`` (COMFYUI_URL) is required: there is no sensible default for a remote server;
- credentials: basic auth (COMFYUI_USERNAME/COMFYUI_PASSWORD) or a bearer token
  (COMFYUI_API_TOKEN), sent on every HTTP call and on the WebSocket handshake;
- TLS is verified by default against the system store or COMFYUI_CA_BUNDLE;
  COMFYUI_VERIFY_TLS=false turns verification off, explicitly, for HTTP and wss alike;
- the WebSocket is pinged every ``ws_ping_seconds`` so proxies do not drop it
  while a long node runs; credentials over plain http are logged as a warning.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from machine.connectors.base import ConnectorError, ErrorType
from machine.connectors.comfyui import ComfyUIConnector


class ComfyUIRemoteConnector(ComfyUIConnector):
    """A ComfyUI server someone else runs (customer infrastructure, a hosted service)."""

    kind = "comfyui-remote"
    ws_ping_seconds = 25.0

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> ComfyUIRemoteConnector:
        if not settings.get("url"):
            raise ConnectorError("comfyui-remote needs the server's URL (COMFYUI_URL)",
                                 ErrorType.VALIDATION)
        connector = super().from_settings(settings)
        client = connector.client
        if client.auth_headers() and not client.secure:
            connector.log("health_check", level=logging.WARNING,
                          message=f"credentials for {client.url} go over plain http")
        return connector  # type: ignore[return-value]
