"""What the Machines page downloads per refresh, in a real headless Chromium."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis
import requests
from fleet import publish_fleet
from test_monitor_browser import open_page  # noqa: F401 - the page fixture

from conftest import wait_for
from machine.status import publish


def test_the_machines_page_reads_what_it_shows_and_nothing_when_the_fleet_is_unchanged(
        start_server: Callable[..., Any], open_page: Callable[..., Any],  # noqa: F811
        client: redis.Redis) -> None:
    """Tried: 60 machines of 8 workers on the Machines page, which reads the fleet at every
    refresh (every 5 s and on worker, machine and job events), then a machine event that
    changes nothing, then one that renames a machine's host. Before, every read was the
    whole view, uncompressed (445 KB here; 2.2 MB at 300 machines), changed or not. Now
    the page reads only the fields it shows (each capability profile once), gzipped, and
    a refresh of an unchanged fleet is a 304 with no body; a change still shows."""
    records = publish_fleet(client, machines=60, workers=8)
    monitor = start_server("monitor")
    whole = requests.get(monitor.base + "/emp/api/machines", timeout=30,
                         headers={"Accept-Encoding": "identity"})
    assert whole.status_code == 200 and len(whole.content) > 400_000, len(whole.content)
    refused = requests.get(monitor.base + "/emp/api/machines?view=cards", timeout=10)
    assert refused.status_code == 400
    assert refused.json()["error"] == "view must be 'full' or 'page', not 'cards'"
    reads: list[Any] = []
    page = open_page(None)
    page.on("response", lambda r: reads.append(r) if "/emp/api/machines" in r.url else None)
    page.goto(monitor.base + "/machines")
    page.wait_for_selector('#emp-live[data-state="live"]')
    wait_for(lambda: len(page.query_selector_all(".emp-machine")) == 60, timeout=20,
             message="60 machine cards")
    first = reads[0]
    body = first.request.sizes()["responseBodySize"]
    assert first.status == 200 and body * 20 < len(whole.content), (body, len(whole.content))
    assert first.headers.get("content-encoding") == "gzip"

    # The same record again, with its event: the page reads again and gets nothing new.
    with page.expect_response(lambda r: "/emp/api/machines" in r.url) as read:
        publish(client, records[0], emit=True)
    again = read.value
    assert again.status == 304, again.status
    assert again.request.sizes()["responseBodySize"] == 0
    assert len(page.query_selector_all(".emp-machine")) == 60
    assert page.query_selector('tr[data-worker-id="box-059-simulation-7"]') is not None
    assert "24 GB" in (page.text_content('tr[data-worker-id="box-059-simulation-7"]') or "")

    # A change reaches the page.
    seen = len(reads)
    publish(client, {**records[0], "hostname": "renamed-host"}, emit=True)
    card = '.emp-machine[data-machine-id="box-000"]'
    page.wait_for_function("s => document.querySelector(s).innerText.includes('renamed-host')",
                           arg=card, timeout=10_000)
    assert 200 in [read.status for read in reads[seen:]]
