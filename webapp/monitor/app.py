"""Flower, extended: its own pages and API, plus the GPU queue views in the same process."""

from __future__ import annotations

from typing import Any

from celery import Celery
from flower.app import Flower, rewrite_handler

from webapp.monitor import flower_gate, routes
from webapp.monitor.cancellations import CancellationFeed
from webapp.monitor.headers import SecurityHeaders
from webapp.monitor.hosts import UnknownHostHandler, allowed_names, host_allowed
from webapp.monitor.state import MonitorState
from webapp.monitor.templating import LayeredLoader


class EmpMonitor(Flower):
    """Flower with the monitor's routes in front of its own and its templates layered on."""

    #: Flower's inspector shares the pool with the monitor's Redis reads.
    max_workers = 16

    def __init__(self, options: Any, capp: Celery, state: MonitorState,
                 **settings: Any) -> None:
        super().__init__(options=options, capp=capp, template_loader=LayeredLoader(),
                         **settings)
        self.emp = state
        flower_gate.install(self, state)  # Flower's inspector and blocking calls: the gate
        ours = routes.handlers() + flower_gate.gated_routes()
        if options.url_prefix:
            ours = [rewrite_handler(h, options.url_prefix) for h in ours]
        self.add_handlers(r".*", ours + routes.root_handlers())
        self.add_transform(SecurityHeaders)  # every answer, Flower's too: no framing, CSP
        self.cancellations = CancellationFeed(state.hub, self.events.state, self.io_loop)
        #: Names an open monitor answers (``hosts``); None: every name (auth is on, or ``*``).
        self.answered_names = (None if options.basic_auth or options.auth
                               else allowed_names())

    def find_handler(self, request: Any, **kwargs: Any) -> Any:
        """Every request, Flower's own included, first passes the DNS-rebinding guard."""
        if not host_allowed(request.host, self.answered_names):
            return self.get_handler_delegate(request, UnknownHostHandler)
        return super().find_handler(request, **kwargs)

    def start(self) -> None:
        self.cancellations.start()
        super().start()

    def stop(self) -> None:
        self.cancellations.stop()
        self.emp.hub.stop()
        super().stop()
