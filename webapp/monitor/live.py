"""``GET /emp/events``: the event log as Server-Sent Events, for live pages.

The same feed as the API's monitor socket (``webapp.api.session.Session``
over the process's ``EventHub``, messages from ``monitor_message``) written
as an ``text/event-stream``. The browser's EventSource reconnects by itself
and sends ``Last-Event-ID``; the session replays what the pools' logs hold
after it before going live, so a page that lost its connection misses no
job event. A ``Last-Event-ID`` (or ``?last_event_id=``) that is no stream id, or is
given more than once, gets 400 naming it, and nothing is subscribed.

Each stream holds at most ``EMP_SSE_BACKLOG`` messages not yet written (the
WebSocket path's bound): a client that stops reading is dropped, its stream
closed and its queue freed, with a log line saying so; its EventSource
reconnects and resumes from its Last-Event-ID.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from itertools import count

import tornado.web
from tornado.iostream import StreamClosedError

from emp_tasks import defaults
from webapp.api.events import SUBSCRIPTION_BACKLOG, Subscription
from webapp.api.messages import monitor_message
from webapp.api.resume import FIELD, BadResumeId, parse_resume_id
from webapp.api.session import Session
from webapp.monitor.handlers import MonitorHandler
from webapp.query import repeated

logger = logging.getLogger(__name__)

#: The header an EventSource resumes with (taken once, like every query parameter).
HEADER = "Last-Event-ID"
#: Seconds of silence before a comment line keeps proxies from closing the stream.
KEEPALIVE_SECONDS = 15.0
#: The browser waits this long (ms) before reconnecting.
RETRY_MS = 2000
#: Seconds between two looks, while the stream is idle, at whether the event log is read.
OUTAGE_CHECK_SECONDS = 1.0
_ids = count(1)


def backlog_limit() -> int:
    """Messages a stream may queue unwritten before it is dropped (``EMP_SSE_BACKLOG``, at
    least 1; the monitor reads it at start, so a bad one stops it there, not each stream)."""
    return defaults.env_at_least("EMP_SSE_BACKLOG", SUBSCRIPTION_BACKLOG, 1, int)


class StreamSink:
    """What ``Session`` writes to: hands each message to the IOLoop, from any thread.

    The outbox is bounded: the message that would overflow it frees what is
    queued, ends the stream and calls ``on_overflow`` (on the IOLoop).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, limit: int,
                 on_overflow: Callable[[], None] = lambda: None) -> None:
        self.loop, self.limit, self.on_overflow = loop, limit, on_overflow
        self.outbox: asyncio.Queue[str | None] = asyncio.Queue(limit)
        self.overflowed = False

    def send(self, text: str) -> None:
        if not self.overflowed:
            self.loop.call_soon_threadsafe(self._put, text)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.end)

    def end(self) -> None:
        """Wake the writer to end the stream (on the IOLoop); drops what is queued if full."""
        if self.outbox.full():
            self._discard()
        self.outbox.put_nowait(None)

    def _put(self, text: str) -> None:
        if self.overflowed:
            return
        try:
            self.outbox.put_nowait(text)
        except asyncio.QueueFull:
            self.overflowed = True
            self._discard()
            self.outbox.put_nowait(None)
            self.on_overflow()

    def _discard(self) -> None:
        while not self.outbox.empty():
            self.outbox.get_nowait()


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
        headers = self.request.headers.get_list(HEADER)  # .get joins repeats with ","
        header = headers[0] if headers else None
        given = self.get_arguments("last_event_id")  # Tornado's get_argument takes the last
        try:
            if len(headers) > 1:
                raise BadResumeId(headers, HEADER, repeated(HEADER, len(headers)))
            if len(given) > 1:
                raise BadResumeId(given, FIELD, repeated(FIELD, len(given)))
            last_id = parse_resume_id(header, HEADER) if header else parse_resume_id(
                given[0] if given else None)
        except BadResumeId as exc:  # nothing subscribed; EventSource stops on a 400
            self.set_status(400)
            self.set_header("Content-Type", "application/json; charset=UTF-8")
            self.finish(json.dumps({"success": False, "error": str(exc), "field": exc.field}))
            return
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Accel-Buffering", "no")
        sink = self.sink = StreamSink(asyncio.get_running_loop(), backlog_limit(),
                                      self._fell_behind)
        subscription = Subscription(system=True, info={
            "monitor_id": f"monitor-ui-{next(_ids)}", "kind": "monitor", "transport": "sse",
            "remote": self.request.remote_ip, "connected_at": int(time.time() * 1000)})
        session = Session(sink, self.state.hub, subscription, monitor_message, shared="monitor")
        started_at = time.monotonic()
        await self.blocking(session.start)
        await self.blocking(session.follow_all, last_id)
        try:
            self.write(f"retry: {RETRY_MS}\n\n")
            await self.flush()
            written_at = time.monotonic()
            while not self.closed:
                try:
                    text = await asyncio.wait_for(sink.outbox.get(), OUTAGE_CHECK_SECONDS)
                except TimeoutError:
                    if self._reads_fail_since(started_at):
                        break
                    if time.monotonic() - written_at >= KEEPALIVE_SECONDS:
                        self.write(": keep-alive\n\n")
                        await self.flush()
                        written_at = time.monotonic()
                    continue
                if text is None:
                    break
                self.write(frame(text))
                await self.flush()
                written_at = time.monotonic()
        except StreamClosedError:
            pass
        finally:
            await self.offload(session.close)  # no Redis: runs during an outage too

    @tornado.web.authenticated
    async def head(self) -> None:
        """Whether a stream would open now, for a page whose EventSource gave up (it cannot
        read why): 200; the login's 401 or redirect; 503 with ``Retry-After`` while Redis
        is unreachable."""
        await self.blocking(self.state.backend.redis.ping)
        self.finish()

    def _reads_fail_since(self, started_at: float) -> bool:
        """Whether the event log's reads began failing after this stream opened (Redis
        went away): the stream ends, so the browser's reconnect meets the outage's 503
        and the pages say Redis is unreachable. Before, the stream stayed open sending
        keep-alives and every tab said "live" through the whole outage."""
        since = self.state.hub.failing_since
        return since is not None and since > started_at

    def _fell_behind(self) -> None:
        """The client stopped reading: close its connection, which ends a pending flush."""
        logger.warning("dropping an SSE client (%s) that fell %d messages behind; it resumes "
                       "from its Last-Event-ID", self.request.remote_ip, backlog_limit())
        self.closed = True
        self.request.connection.close()

    def on_connection_close(self) -> None:
        self.closed = True
        if self.sink is not None:  # wake the writer now, not at the next keep-alive
            self.sink.end()
