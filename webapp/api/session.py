"""One WebSocket connection's outgoing side: ordered, gap-free, never doubled.

The handler thread reads what the client sends; a sender thread writes the
events. When a job (or, for monitors, the whole log) is subscribed with a
last-seen id, the live events that arrive meanwhile are held back until the
missed ones have been read from Redis and sent, and anything at or below the
last id sent for that job is skipped.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from simple_websocket import ConnectionClosed
from wsproto.events import TextMessage

from capability_router.states import JobEvent
from webapp.api.events import SUBSCRIPTION_BACKLOG, Event, EventHub, Subscription, id_key
from webapp.api.resume import BadResumeId

logger = logging.getLogger(__name__)

#: Key of the whole-log cursor of a monitor session.
ALL = "*"
#: Put on a session's queue by close(): the sender waits on the queue with no timeout
#: (thousands of idle sockets must not wake up twice a second each).
_WAKE = object()
#: WebSocket close code of a refused request (RFC 6455 "policy violation").
CLOSE_REFUSED = 1008


#: Seconds a server-side close waits for the client's close reply (a client that answers
#: ends it at once; 1 s was too short on a loaded machine: the reset lost the error sent).
CLOSE_WAIT_SECONDS = 5.0
#: Events a sender takes from its queue at a time and writes with one socket write.
BATCH = 200
#: Seconds a shared-feed (monitor) sender lets events gather before writing them: at
#: 1,300 events/s, ~25 events per write instead of one, for 20 ms of added delay.
COALESCE_SECONDS = 0.02
#: Ended jobs a client session keeps following after their end event (a failed or
#: cancelled one's retry runs it again under its id); past this many the oldest is
#: let go.
ENDED_KEPT = 1000
#: Seconds a client session keeps following a completed job: nothing runs it again
#: (retry and resubmit refuse it), and only its workflow's ``workflow_completed``,
#: filed in the same step right after its ``complete_job``, may follow, perhaps read
#: in a later batch. Counted in ENDED_KEPT like the others, they cost a follower socket
#: ~0.75 KB each for its last 1,000 (production_day: the API grew 44 MB in 10 min).
COMPLETED_KEPT_SECONDS = 60.0


def text_frame(text: str) -> bytes:
    """``text`` as one unmasked, uncompressed WebSocket text frame (RFC 6455 5.2): the
    bytes wsproto writes for it on a server connection without extensions, the same for
    every such connection. A monitor event goes to every monitor: framed once, not once
    per socket (wsproto's framing was ~2.3 us a message, 20 monitors x 800 events/s)."""
    payload = text.encode("utf-8")
    size = len(payload)
    if size < 126:
        header = bytes((0x81, size))
    elif size < 1 << 16:
        header = bytes((0x81, 126)) + size.to_bytes(2, "big")
    else:
        header = bytes((0x81, 127)) + size.to_bytes(8, "big")
    return header + payload


def takes_plain_frames(ws: Any) -> bool:
    """Whether ``ws`` is a simple_websocket server connection whose client offered no
    extension (so none was negotiated: its frames are ``text_frame``'s). A client that
    offered permessage-deflate (browsers do) keeps its per-connection compressed frames."""
    environ = getattr(ws, "environ", None)
    return (getattr(ws, "ws", None) is not None and getattr(ws, "sock", None) is not None
            and isinstance(environ, dict) and not environ.get("HTTP_SEC_WEBSOCKET_EXTENSIONS"))


def send_texts(ws: Any, texts: list[str | bytes]) -> None:
    """Write several text messages, one frame each, with one socket write.

    A monitor gets every event of every pool (1,300/s at the production
    bench's load, times 20 monitors): a write and a thread switch per message
    was most of the API's CPU. Anything that is not a simple_websocket
    connection (the monitor's SSE sink) gets one ``send`` per message. A
    ``bytes`` item is a ready frame (``text_frame``), only ever given for a
    connection that ``takes_plain_frames``.
    """
    wsproto_conn, sock = getattr(ws, "ws", None), getattr(ws, "sock", None)
    if wsproto_conn is None or sock is None or (
            len(texts) == 1 and not isinstance(texts[0], bytes)):
        for text in texts:
            ws.send(text)
        return
    if not ws.connected:
        raise ConnectionClosed(ws.close_reason, ws.close_message)
    sock.sendall(b"".join(text if isinstance(text, bytes)
                          else wsproto_conn.send(TextMessage(data=text)) for text in texts))


def close_socket(ws: Any, code: int | None = None, message: str | None = None,
                 wait: float = CLOSE_WAIT_SECONDS) -> None:
    """Close from the server side, then wait (briefly: ``wait`` seconds at most) for the
    client's close reply.

    simple_websocket's close only sends the close frame. Returning at once lets
    the server drop the TCP connection while the reply is unread, and the
    kernel then answers with a reset that can discard the frames the client
    had not read yet: the client saw 1005 and never the error sent before.
    """
    try:
        ws.close(reason=code, message=message)
    except (ConnectionClosed, OSError):
        return
    reader = getattr(ws, "thread", None)
    if reader is not None:
        reader.join(wait)
    # Wake the handler blocked in ``receive`` (it raises ConnectionClosed now that the
    # socket is closed): a client that never replied no longer holds it until its timeout.
    event = getattr(ws, "event", None)
    if event is not None:
        event.set()


def refuse(ws: Any, exc: BadResumeId) -> None:
    """Answer a connection whose resume id is bad: an error naming the field, then close;
    nothing was subscribed."""
    try:
        ws.send(json.dumps({"type": "error", "error": str(exc), "field": exc.field}))
    except (ConnectionClosed, OSError):
        return
    close_socket(ws, CLOSE_REFUSED, f"bad {exc.field}")


@dataclass(frozen=True)
class Replay:
    """Send what the log holds after ``after`` for a job (or for every pool)."""

    job_id: str | None
    namespace: str | None
    after: str | None


class Session:
    """Sends one connection's events in order, replays before live."""

    def __init__(self, ws: Any, hub: EventHub, subscription: Subscription,
                 render: Callable[[Event], dict[str, Any]], shared: str | None = None) -> None:
        """``shared`` names a renderer whose output does not depend on the connection
        (``monitor_message``): each event is then encoded once for every such session."""
        self.ws, self.hub, self.sub, self.render = ws, hub, subscription, render
        self.shared = shared
        #: Shared messages go out as frames made once for every such socket.
        self._plain = shared is not None and takes_plain_frames(ws)
        #: Texts (or ready frames) of the batch being sent; None outside ``_run``'s batches.
        self._batch: list[str | bytes] | None = None
        self._sender: int | None = None  # the sender thread's ident
        self._send_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._last: dict[str, tuple[int, int]] = {}
        self._awaiting: set[str] = set()
        self._held: dict[str, list[Event]] = {}
        #: Ended jobs still followed, oldest first (at most ENDED_KEPT): job id -> its
        #: ``_last`` key and, for a completed one, when to let go of it (monotonic).
        self._ended: OrderedDict[str, tuple[str, float | None]] = OrderedDict()
        #: The completed ones: (when to let go, job id), oldest first.
        self._completed: deque[tuple[float, str]] = deque()
        #: Jobs let go: (job id, its ``_last`` key, the count of queue items taken once
        #: every event queued for it before it was let go has been taken). Its dedupe
        #: position is dropped then, not before, so none of those is sent twice.
        self._retiring: deque[tuple[str, str, int]] = deque()
        #: Items taken from the subscription's queue so far.
        self._taken = 0
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="emp-ws-sender")

    def start(self) -> Session:
        self.hub.subscribe(self.sub)
        self._thread.start()
        return self

    def close(self) -> None:
        self._closed.set()
        self.hub.unsubscribe(self.sub)
        try:  # wake the sender, which blocks on the queue without a timeout
            self.sub.queue.put_nowait(_WAKE)
        except queue.Full:  # it has events to send: it wakes anyway
            pass

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def send(self, message: dict[str, Any]) -> None:
        """Send one JSON message (thread-safe); marks the session closed on failure."""
        self._send_text(json.dumps(message, default=str))

    def _send_text(self, text: str | bytes) -> None:
        if self._batch is not None and threading.get_ident() == self._sender:
            self._batch.append(text)
            return
        self._write([text])

    def _write(self, texts: list[str | bytes]) -> None:
        try:
            with self._send_lock:
                send_texts(self.ws, texts)
        except (ConnectionClosed, OSError):
            self._closed.set()

    def follow_job(self, namespace: str, job_id: str, after: str | None) -> None:
        """Subscribe to a job; events after ``after`` (all when None) are sent first."""
        self.hub.track([namespace])
        with self._state_lock:
            self._awaiting.add(job_id)
        self.hub.follow(self.sub, job_id)
        self.sub.queue.put(Replay(job_id, namespace, after))

    def follow_all(self, after: str | None) -> None:
        """Monitors: every pool's events, those after ``after`` first."""
        self.hub.track(self.hub.namespaces())
        if after:
            with self._state_lock:
                self._awaiting.add(ALL)
        self.hub.follow_everything(self.sub)
        if after:
            self.sub.queue.put(Replay(None, None, after))

    # -- the sender thread --------------------------------------------------

    def _run(self) -> None:
        self._sender = threading.get_ident()
        while not self._closed.is_set():
            if self.sub.overflowed:
                logger.warning("dropping a WebSocket that fell %d events behind",
                               self.sub.queue.maxsize)
                self._drop("too far behind; reconnect with your last event_id")
                break
            items = [self._next_item()]
            if self.shared is not None and items[0] is not _WAKE:
                time.sleep(COALESCE_SECONDS)
            while len(items) < BATCH:
                try:
                    items.append(self.sub.queue.get_nowait())
                except queue.Empty:
                    break
            self._taken += len(items)
            self._batch = []
            try:
                for item in items:
                    if self._closed.is_set():
                        break
                    if item is _WAKE:
                        continue
                    try:
                        if isinstance(item, Replay):
                            self._replay(item)
                        else:
                            self._live(item)
                    except Exception:  # a bad event or Redis hiccup must not kill it
                        logger.exception("could not send an event")
            finally:
                texts, self._batch = self._batch, None
                if texts:
                    self._write(texts)
            self._let_go_completed()
            self._retire()

    def _next_item(self) -> Any:
        """The next queue item; while completed jobs are held, waits no longer than the
        first one's hold, then lets go of those due (an idle socket, a browser tab left
        open once its jobs completed, holds them no longer than a busy one)."""
        while self._completed:
            try:
                return self.sub.queue.get(
                    timeout=max(0.0, self._completed[0][0] - time.monotonic()))
            except queue.Empty:
                self._let_go_completed()
                self._retire()
        return self.sub.queue.get()

    def _drop(self, reason: str) -> None:
        """Tell the client why, then close: it resumes from its last event id."""
        texts, self._batch = self._batch or [], None  # what is due goes first
        self._write([*texts, json.dumps({"type": "error", "error": reason})])
        self._closed.set()
        try:
            close_socket(self.ws)
        except Exception:  # already gone
            pass

    def _live(self, event: Event) -> None:
        hold = ALL if self.sub.everything else (event.job_id or ALL)
        with self._state_lock:
            if hold in self._awaiting:
                held = self._held.setdefault(hold, [])
                held.append(event)
                if len(held) > SUBSCRIPTION_BACKLOG:  # a replay that never ends: bounded too
                    self.sub.overflowed = True
                return
        self._emit(event)

    def _note_end(self, event: Event, key: str) -> None:
        """Let go of a job once ENDED_KEPT later jobs ended (a completed one after
        COMPLETED_KEPT_SECONDS too), so a socket that submits job after job for weeks
        holds state only for its running jobs and its last ended ones (it kept an entry
        in three structures per job it ever followed: ~0.6 KB each, never freed).
        Another event of an ended job (a retry) makes it running again, except a
        workflow milestone filed with its step's id."""
        job_id = event.job_id or ""
        if str(event.name).startswith("workflow_"):
            return
        self._ended.pop(job_id, None)
        if event.name in (JobEvent.COMPLETED, JobEvent.FAILED, JobEvent.CANCELLED):
            until = None
            if event.name == JobEvent.COMPLETED:
                until = time.monotonic() + COMPLETED_KEPT_SECONDS
                self._completed.append((until, job_id))
                if len(self._completed) > ENDED_KEPT:  # its oldest left ``_ended`` already
                    self._completed.popleft()
            self._ended[job_id] = (key, until)
            while len(self._ended) > ENDED_KEPT:
                job_id, ended = self._ended.popitem(last=False)
                if not self._let_go(job_id, ended[0]):  # followed again meanwhile: kept,
                    self._ended[job_id] = ended  # as the newest, tried at the next end
                    break

    def _let_go_completed(self) -> None:
        """Let go of the completed jobs held COMPLETED_KEPT_SECONDS (unless a later event
        made one running again, or it is let go already)."""
        now = time.monotonic()
        while self._completed and self._completed[0][0] <= now:
            until, job_id = self._completed.popleft()
            ended = self._ended.get(job_id)
            if ended is None or ended[1] != until:  # not the end noted then
                continue
            if self._let_go(job_id, ended[0]):
                del self._ended[job_id]
            else:  # followed again meanwhile: its replay is on its way, hold it again
                until = now + COMPLETED_KEPT_SECONDS
                self._ended[job_id] = (ended[0], until)
                self._completed.append((until, job_id))

    def _let_go(self, job_id: str, key: str) -> bool:
        """Stop following ``job_id``; False, keeping it, while a follow_job of it waits
        for its replay."""
        with self._state_lock:  # a follow_job meanwhile either sees it gone or keeps it
            if job_id in self._awaiting:
                return False
            self.hub.unfollow(self.sub, job_id)
        self._retiring.append((job_id, key, self._taken + self.sub.queue.qsize()))
        return True

    def _retire(self) -> None:
        """Drop the dedupe positions of jobs let go whose queued events are all taken."""
        while self._retiring and self._retiring[0][2] <= self._taken:
            job_id, key, _ = self._retiring.popleft()
            if job_id not in self.sub.jobs:  # not followed again meanwhile
                self._last.pop(key, None)

    def _replay(self, replay: Replay) -> None:
        hold = replay.job_id if replay.job_id is not None else ALL
        try:
            if replay.job_id is not None:
                missed = self.hub.replay_job(replay.namespace or "default", hold, replay.after)
            else:
                missed = self.hub.replay_pools(replay.after or "0-0")
        except Exception:
            # Never stay in the replay state: it holds every later event. The client
            # resumes from its last event id once the log can be read again.
            logger.warning("could not replay the event log; closing the connection",
                           exc_info=True)
            with self._state_lock:
                self._held.pop(hold, None)
                self._awaiting.discard(hold)
            self._drop("could not read the event log; reconnect with your last event_id")
            return
        with self._state_lock:
            held = self._held.pop(hold, [])
            self._awaiting.discard(hold)
        for event in sorted(missed + held, key=lambda e: id_key(e.id)):
            self._emit(event)

    def _emit(self, event: Event) -> None:
        # Ids are ordered within one pool's log: dedupe per pool (and per job for clients).
        if event.namespace is not None:
            key = event.namespace + ("" if self.sub.everything else ":" + (event.job_id or ""))
            position = id_key(event.id)
            if position <= self._last.get(key, (-1, -1)):
                return
            self._last[key] = position
            if not self.sub.everything and event.job_id:
                self._note_end(event, key)
        shared = self.shared
        if shared is None:
            self.send(self.render(event))
            return
        if self._plain:
            frame = event.frames.get(shared)
            if frame is None:
                frame = event.frames[shared] = text_frame(self._shared_text(event, shared))
            self._send_text(frame)
            return
        self._send_text(self._shared_text(event, shared))

    def _shared_text(self, event: Event, shared: str) -> str:
        """The event as renderer ``shared`` writes it, encoded once for every session."""
        text = event.texts.get(shared)
        if text is None:
            text = event.texts[shared] = json.dumps(self.render(event), default=str)
        return text
