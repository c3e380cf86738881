"""The log shipper: batches to an HTTP receiver, retries while it is down, drops when full."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from emp_tasks.local_redis import free_port
from machine.logs import json_formatter
from machine.shipping import LogShipper, read_stats, shipping_url


class Receiver:
    """A Fluent Bit ``http`` input stand-in: keeps every POSTed JSON array."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.batches: list[list[dict]] = []
        self.paths: list[str] = []
        self._server = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/emp.logs"

    @property
    def lines(self) -> list[dict]:
        return [line for batch in list(self.batches) for line in batch]

    def _app(self, environ, start_response):  # noqa: ANN001, ANN202 - WSGI
        request = Request(environ)
        body = json.loads(request.get_data())
        assert isinstance(body, list)
        self.batches.append(body)
        self.paths.append(request.path)
        return Response("", status=201)(environ, start_response)

    def start(self) -> Receiver:
        self._server = make_server("127.0.0.1", self.port, self._app, threaded=True)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver().start()
    yield server
    server.stop()


@pytest.fixture
def ship(tmp_path: Path) -> Iterator:
    """Factory: a logger whose lines go to a new LogShipper (closed after the test)."""
    made: list[tuple[logging.Logger, LogShipper]] = []

    def make(url: str, **options: object) -> tuple[logging.Logger, LogShipper]:
        shipper = LogShipper(url, stats_dir=tmp_path / "stats", **options)
        shipper.setFormatter(json_formatter())
        logger = logging.getLogger(f"test.ship.{len(made)}")
        logger.propagate = False
        logger.setLevel(logging.INFO)
        logger.addHandler(shipper)
        made.append((logger, shipper))
        return logger, shipper

    yield make
    for logger, shipper in made:
        logger.removeHandler(shipper)
        shipper.close_timeout = 0.2
        shipper.close()


def wait_for(predicate, timeout: float = 15.0, message: str = "condition"):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.02)
    pytest.fail(f"timed out waiting for {message}")


def test_lines_arrive_in_batches_as_json_arrays(receiver: Receiver, ship) -> None:  # noqa: ANN001
    logger, shipper = ship(receiver.url, batch_size=50, flush_seconds=0.2)
    for i in range(120):
        logger.info("line %d", i, extra={"event": "job_progress", "n": i})
    wait_for(lambda: len(receiver.lines) == 120, message="120 lines")
    assert [line["n"] for line in receiver.lines] == list(range(120))
    assert all(len(batch) <= 50 for batch in receiver.batches) and len(receiver.batches) >= 3
    assert set(receiver.paths) == {"/emp.logs"}  # Fluent Bit takes the tag from the path
    assert receiver.lines[0]["message"] == "line 0" and receiver.lines[0]["event"] == "job_progress"
    assert shipper.flush(5)
    stats = shipper.stats()
    assert stats["shipped"] == 120 and stats["dropped"] == 0 and stats["queued"] == 0


def test_survives_the_receiver_going_down_and_coming_back(receiver: Receiver,
                                                          ship) -> None:  # noqa: ANN001
    logger, shipper = ship(receiver.url, batch_size=10, flush_seconds=0.1,
                           max_backoff_seconds=0.5)
    for i in range(5):
        logger.info("before %d", i)
    wait_for(lambda: len(receiver.lines) == 5, message="lines before the outage")
    receiver.stop()
    slowest = 0.0
    for i in range(20):
        started = time.perf_counter()
        logger.info("during %d", i)
        slowest = max(slowest, time.perf_counter() - started)
    wait_for(lambda: shipper.stats()["failures"] >= 2, message="failed attempts while down")
    assert slowest < 0.05, f"a logging call blocked for {slowest:.3f}s while the receiver was down"
    assert len(receiver.lines) == 5
    receiver.start()  # the same port again
    for i in range(5):
        logger.info("after %d", i)
    wait_for(lambda: len(receiver.lines) == 30, message="every line after the outage")
    messages = [line["message"] for line in receiver.lines]
    assert messages == ([f"before {i}" for i in range(5)] + [f"during {i}" for i in range(20)]
                        + [f"after {i}" for i in range(5)])
    assert shipper.stats()["dropped"] == 0


def test_a_full_queue_drops_and_counts_and_reports(tmp_path: Path, ship) -> None:  # noqa: ANN001
    down = Receiver()  # not started yet: nothing listens on its port
    logger, shipper = ship(down.url, queue_size=10, batch_size=5, flush_seconds=0.05,
                           max_backoff_seconds=0.2, drop_report_seconds=0.2)
    for i in range(40):
        logger.info("line %d", i)
    stats = shipper.stats()
    assert stats["dropped"] > 0 and stats["dropped"] == 40 - stats["queued"]
    kept = stats["queued"]
    reports = logging.getLogger("emp.logs")  # the report is logged; in a worker root ships it
    reports.addHandler(shipper)
    down.start()
    try:
        wait_for(lambda: any(line.get("event") == "log_drops" for line in down.lines),
                 message="the log_drops report")
        wait_for(lambda: len([x for x in down.lines if x.get("event") != "log_drops"]) == kept,
                 message="the lines that were kept")
        report = next(line for line in down.lines if line.get("event") == "log_drops")
        # The 40 lines' drops at least; the shipper's own warnings, logged to emp.logs
        # while the queue was still full, may have been dropped and counted too.
        assert report["dropped_total"] >= stats["dropped"] and report["level"] == "WARNING"
        wait_for(lambda: read_stats(tmp_path / "stats")["dropped"] == shipper.stats()["dropped"],
                 message="the stats file to match the shipper's count")
    finally:
        reports.removeHandler(shipper)
        down.stop()


def test_a_rejected_batch_is_not_retried_forever(ship) -> None:  # noqa: ANN001
    rejecting = Receiver()
    rejecting._app = lambda environ, start_response: Response("no", status=400)(  # noqa: SLF001
        environ, start_response)
    rejecting.start()
    try:
        logger, shipper = ship(rejecting.url, flush_seconds=0.05)
        logger.info("unwanted")
        wait_for(lambda: shipper.stats()["rejected"] == 1, message="the rejection")
        assert shipper.stats()["last_error"].startswith("HTTP 400")
    finally:
        rejecting.stop()


def test_urls_from_the_environment() -> None:
    assert shipping_url({}) is None
    assert shipping_url({"FLUENT_BIT_URL": "http://fb:9880/x"}) == "http://fb:9880/x"
    assert shipping_url({"FLUENTD_HOST": "agg", "FLUENTD_PORT": "24224"}) == \
        "http://agg:24224/emp.logs"
    assert shipping_url({"FLUENTD_HOST": "agg", "FLUENTD_SECURE": "true",
                         "EMP_LOG_TAG": "gpu"}) == "https://agg:8888/gpu"


def test_the_stats_show_no_password_of_the_log_endpoint(ship, receiver) -> None:  # noqa: ANN001
    """Tried: FLUENT_BIT_URL with credentials (``http://fluser:flpass@host/...``). The
    stats, which the machine's open ``/status`` serves to anyone, carried the URL whole."""
    host = receiver.url.removeprefix("http://")
    _, shipper = ship(f"http://fluser:flpass@{host}/emp.logs")
    shown = shipper.stats()["url"]
    assert "flpass" not in shown and shown == f"http://fluser:***@{host}/emp.logs"
    _, plain = ship(f"http://{host}/emp.logs")
    assert plain.stats()["url"] == f"http://{host}/emp.logs"


def test_an_unparseable_endpoint_is_counted_and_shown_without_its_password(
        ship, tmp_path: Path) -> None:  # noqa: ANN001
    """Tried: FLUENT_BIT_URL with credentials and an unclosed IPv6 bracket
    (``http://fluser:flpass@[::1/emp.logs``), then a line logged. Before, masking the
    password raised ValueError (the URL does not parse): ``stats()``, which ``/status``
    serves, failed, and so did the shipping thread when it wrote its counters after the
    failed POST, so nothing counted the failures. Now the URL shows as
    ``<unreadable url>`` and the failures are counted in the stats file."""
    logger, shipper = ship("http://fluser:flpass@[::1/emp.logs")
    logger.info("hello")
    wait_for(lambda: read_stats(tmp_path / "stats")["failures"] >= 1, message="a failure")
    assert shipper.stats()["url"] == "<unreadable url>"
