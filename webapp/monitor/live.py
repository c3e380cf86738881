"""``GET /emp/events``: the event log as Server-Sent Events, for live pages.

The same feed as the API's monitor socket (``webapp.api.session.Session``
over the process's ``EventHub``, messages from ``monitor_message``) written
as an ``text/event-stream``. The browser's EventSource reconnects by itself
and sends ``Last-Event-ID``; the session replays what the pools' logs hold
after it before going live, so a page that lost its connection misses no
job event.
"""

from __future__ import annotations

import asyncio
import json
import time
from itertools import count

import tornado.web
from tornado.iostream import StreamClosedError

from webapp.api.events import Subscription
from webapp.api.messages import monitor_message
from webapp.api.session import Session
from webapp.monitor.handlers import MonitorHandler

#: Seconds of silence before a comment line keeps proxies from closing the stream.
KEEPALIVE_SECONDS = 15.0
#: The browser waits this long (ms) before reconnecting.
RETRY_MS = 2000
_ids = count(1)


class StreamSink:
    """What ``Session`` writes to: hands each message to the IOLoop, from any thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.outbox: asyncio.Queue[str | None] = asyncio.Queue()

    def send(self, text: str) -> None:
        self.loop.call_soon_threadsafe(self.outbox.put_nowait, text)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.outbox.put_nowait, None)


def frame(text: str) -> str:
    """One SSE frame; job events carry their log id so a reconnect resumes there."""
    message = json.loads(text)
    head = f"id: {message['event_id']}\n" if message.get("pool") and message.get(
        "event_id") else ""
    return f"{head}data: {text}\n\n"


class EventStream(MonitorHandler):
    """One browser tab's live feed."""

    closed = False
    sink: StreamSink | None = None

    @tornado.web.authenticated
    async def get(self) -> None:
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Accel-Buffering", "no")
        sink = self.sink = StreamSink(asyncio.get_running_loop())
        subscription = Subscription(system=True, info={
            "monitor_id": f"monitor-ui-{next(_ids)}", "kind": "monitor", "transport": "sse",
            "remote": self.request.remote_ip, "connected_at": int(time.time() * 1000)})
        session = Session(sink, self.state.hub, subscription, monitor_message)
        last_id = self.request.headers.get("Last-Event-ID") or self.get_argument(
            "last_event_id", None)
        await self.blocking(session.start)
        await self.blocking(session.follow_all, last_id)
        try:
            self.write(f"retry: {RETRY_MS}\n\n")
            await self.flush()
            while not self.closed:
                try:
                    text = await asyncio.wait_for(sink.outbox.get(), KEEPALIVE_SECONDS)
                except TimeoutError:
                    self.write(": keep-alive\n\n")
                    await self.flush()
                    continue
                if text is None:
                    break
                self.write(frame(text))
                await self.flush()
        except StreamClosedError:
            pass
        finally:
            await self.blocking(session.close)

    def on_connection_close(self) -> None:
        self.closed = True
        if self.sink is not None:  # wake the writer now, not at the next keep-alive
            self.sink.outbox.put_nowait(None)
