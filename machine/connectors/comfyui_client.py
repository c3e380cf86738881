"""HTTP and WebSocket access to one ComfyUI server, with auth and TLS applied to both.

Transport failures become classified ConnectorErrors here, so the connector
only deals with ComfyUI's protocol. Each thread gets its own HTTP session
(``cancel_job`` runs on another thread than the job).
"""

from __future__ import annotations

import base64
import re
import ssl
import threading
import warnings
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests
from simple_websocket import ConnectionError as WebSocketRefused
from urllib3.exceptions import InsecureRequestWarning

from emp_tasks.websocket_client import WebSocketClient
from machine.connectors.base import ConnectorError, ErrorType


class ComfyUIClient:
    """One ComfyUI base URL plus credentials.

    :param url: base URL, ``http(s)://host:port[/prefix]``.
    :param username: basic auth user (with ``password``).
    :param password: basic auth password.
    :param api_token: bearer token (sent as ``Authorization: Bearer <token>``).
    :param verify_tls: verify the server certificate (https/wss).
    :param ca_bundle: CA bundle file to verify against instead of the system store.
    :param ws_ping_seconds: WebSocket ping interval (keeps proxies from dropping an
        idle socket); None sends none.
    """

    #: Seconds an HTTP request may take (connect and read each).
    http_timeout: float = 30.0
    #: Seconds to open the WebSocket before giving up.
    ws_connect_timeout: float = 15.0

    def __init__(self, url: str, username: str | None = None, password: str | None = None,
                 api_token: str | None = None, verify_tls: bool = True,
                 ca_bundle: str | None = None, ws_ping_seconds: float | None = None) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConnectorError(f"ComfyUI URL must be http(s)://host[:port], got {url!r}",
                                 ErrorType.VALIDATION)
        self.url = url.rstrip("/")
        self.username, self.password, self.api_token = username, password, api_token
        self.verify_tls, self.ca_bundle = verify_tls, ca_bundle
        self.ws_ping_seconds = ws_ping_seconds
        self._local = threading.local()
        if self.secure and not verify_tls:
            # Turned off on purpose: say so once here, not in a warning per request.
            warnings.filterwarnings("ignore", category=InsecureRequestWarning,
                                    message=f".*host '{re.escape(parts.hostname)}'")

    @property
    def secure(self) -> bool:
        return self.url.startswith("https:")

    # -- HTTP ---------------------------------------------------------------------

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
            session.headers.update(self.auth_headers())
        return session

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """One HTTP call; connection trouble -> NETWORK, 401/403 and 5xx -> SERVICE."""
        kwargs.setdefault("timeout", self.http_timeout)
        # Per request: requests lets REQUESTS_CA_BUNDLE override a session's verify.
        kwargs.setdefault("verify", self.ca_bundle or self.verify_tls)
        try:
            response = self._session().request(method, f"{self.url}{path}", **kwargs)
        except requests.ReadTimeout as exc:
            raise ConnectorError(f"ComfyUI {method} {path} timed out: {exc}",
                                 ErrorType.TIMEOUT) from exc
        except requests.RequestException as exc:
            raise ConnectorError(f"ComfyUI {method} {path}: connection error: {exc}",
                                 ErrorType.NETWORK) from exc
        if response.status_code in (401, 403):
            raise ConnectorError(f"ComfyUI {method} {path}: HTTP {response.status_code} "
                                 "(check COMFYUI_USERNAME/PASSWORD or COMFYUI_API_TOKEN)",
                                 ErrorType.SERVICE)
        if response.status_code >= 500:
            raise ConnectorError(f"ComfyUI {method} {path}: HTTP {response.status_code}: "
                                 f"{response.text[:500]}", ErrorType.SERVICE)
        return response

    def get_json(self, path: str, **params: Any) -> Any:
        """GET ``path`` and decode JSON; any other 4xx is a SERVICE error."""
        response = self.request("GET", path, params=params or None)
        if response.status_code >= 400:
            raise ConnectorError(f"ComfyUI GET {path}: HTTP {response.status_code}",
                                 ErrorType.SERVICE)
        try:
            return response.json()
        except ValueError as exc:
            raise ConnectorError(f"ComfyUI GET {path}: not JSON", ErrorType.SERVICE) from exc

    def post(self, path: str, body: Any = None) -> requests.Response:
        return self.request("POST", path, json=body)

    def close(self) -> None:
        session = getattr(self._local, "session", None)
        if session is not None:
            session.close()
            self._local.session = None

    # -- WebSocket ------------------------------------------------------------------

    def auth_headers(self) -> dict[str, str]:
        """The Authorization header for HTTP and the WebSocket handshake."""
        if self.api_token:
            return {"Authorization": f"Bearer {self.api_token}"}
        if self.username is not None:
            pair = f"{self.username}:{self.password or ''}".encode()
            return {"Authorization": f"Basic {base64.b64encode(pair).decode()}"}
        return {}

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS settings of the HTTP session, for the WebSocket."""
        if not self.secure:
            return None
        context = ssl.create_default_context(cafile=self.ca_bundle)
        if not self.verify_tls:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def websocket_url(self, client_id: str) -> str:
        parts = urlsplit(self.url)
        scheme = "wss" if parts.scheme == "https" else "ws"
        return urlunsplit((scheme, parts.netloc, f"{parts.path}/ws", f"clientId={client_id}", ""))

    def websocket(self, client_id: str) -> WebSocketClient:
        """Open ``/ws?clientId=``; a handshake that hangs or fails is a NETWORK error.

        simple-websocket has no connect timeout, so the connect runs on a
        helper thread and is abandoned after ``ws_connect_timeout``.
        """
        outcome: dict[str, Any] = {}
        lock = threading.Lock()

        def connect() -> None:
            try:
                ws = WebSocketClient.connect(
                    self.websocket_url(client_id), headers=self.auth_headers(),
                    ssl_context=self.ssl_context(), ping_interval=self.ws_ping_seconds)
            except Exception as exc:  # reported to the caller below
                outcome["error"] = exc
                return
            with lock:
                if outcome.get("abandoned"):
                    ws.close()
                else:
                    outcome["ws"] = ws

        thread = threading.Thread(target=connect, name="comfyui-ws-connect", daemon=True)
        thread.start()
        thread.join(self.ws_connect_timeout)
        with lock:
            outcome["abandoned"] = True
            if "ws" in outcome:
                return outcome["ws"]
        error = outcome.get("error")
        where = f"ComfyUI WebSocket {self.websocket_url(client_id)}"
        if isinstance(error, WebSocketRefused) and error.status_code in (401, 403):
            raise ConnectorError(f"{where}: HTTP {error.status_code} (check credentials)",
                                 ErrorType.SERVICE)
        reason = repr(error) if error else f"no handshake within {self.ws_connect_timeout}s"
        raise ConnectorError(f"{where}: {reason}", ErrorType.NETWORK)
