"""The API's event fan-out: an event reaches the sockets that follow its job (and the
monitors), found through an index rather than by asking every open socket."""

from __future__ import annotations

import redis

from emp_tasks.local_redis import LocalRedis
from webapp.api.events import Event, EventHub, Subscription


def event(job_id: str | None, namespace: str | None = "default") -> Event:
    return Event("1-1", "update_job_progress", job_id, {"progress": 50}, namespace)


def queued(sub: Subscription) -> list[Event]:
    out = []
    while not sub.queue.empty():
        out.append(sub.queue.get_nowait())
    return out


def test_events_reach_followers_and_monitors_only(redis_server: LocalRedis,
                                                  client: redis.Redis) -> None:
    """Tried: 1,000 client sockets each following its own job, one following two jobs, one
    monitor and one worker-events-only monitor; an event for one job."""
    hub = EventHub(redis_server.url)
    hub.stop()  # the reader thread is not needed: events are handed to _dispatch directly
    clients = [Subscription() for _ in range(1000)]
    for i, sub in enumerate(clients):
        hub.subscribe(sub)
        hub.follow(sub, f"job-{i}")
    both = Subscription()
    hub.subscribe(both)
    hub.follow(both, "job-7")
    hub.follow(both, "job-8")
    monitor = Subscription(system=True)
    hub.subscribe(monitor)
    hub.follow_everything(monitor)
    workers_only = Subscription(system=True)
    hub.subscribe(workers_only)

    hub._dispatch(event("job-7"))
    counts = [len(queued(s)) for s in clients]
    assert counts[7] == 1 and sum(counts) == 1
    assert [e.job_id for e in queued(both)] == ["job-7"]
    assert [e.job_id for e in queued(monitor)] == ["job-7"]
    assert queued(workers_only) == []

    hub._dispatch(event(None, namespace=None))  # a worker event: system subscribers only
    assert len(queued(monitor)) == 1 and len(queued(workers_only)) == 1
    assert all(s.queue.empty() for s in clients)


def test_closed_sockets_leave_nothing_in_the_index(redis_server: LocalRedis,
                                                   client: redis.Redis) -> None:
    """Tried: 500 sockets following 3 jobs each, then all closed: no job id stays indexed,
    and a later event for those jobs is offered to no one."""
    hub = EventHub(redis_server.url)
    hub.stop()
    subs = [Subscription() for _ in range(500)]
    for i, sub in enumerate(subs):
        hub.subscribe(sub)
        for j in range(3):
            hub.follow(sub, f"job-{i}-{j}")
    assert len(hub._by_job) == 1500
    for sub in subs:
        hub.unsubscribe(sub)
    assert hub._by_job == {} and hub._wide == set()
    hub._dispatch(event("job-3-1"))
    assert all(s.queue.empty() for s in subs)


def test_connection_counts_follow_opens_and_closes(redis_server: LocalRedis,
                                                  client: redis.Redis) -> None:
    """Tried: 300 client sockets and 2 monitors opened, 100 clients and a monitor closed:
    the counts (what monitors' system_stats show) and the rows of ``/api/connections``
    agree at each step; internal subscriptions are not counted."""
    hub = EventHub(redis_server.url)
    hub.stop()
    clients = [Subscription(info={"kind": "client", "client_id": f"c{i}"}) for i in range(300)]
    monitors = [Subscription(system=True, info={"kind": "monitor"}) for _ in range(2)]
    for sub in [*clients, *monitors, Subscription(everything=True, internal=True)]:
        hub.subscribe(sub)
    assert hub.connection_counts() == {"clients": 300, "monitors": 2}
    rows = hub.connections()
    assert (len(rows["clients"]), len(rows["monitors"])) == (300, 2)
    for sub in [*clients[:100], monitors[0]]:
        hub.unsubscribe(sub)
    assert hub.connection_counts() == {"clients": 200, "monitors": 1}
    rows = hub.connections()
    assert (len(rows["clients"]), len(rows["monitors"])) == (200, 1)
    hub._publish_connections()  # the reader's periodic rewrite agrees
    assert hub.connection_counts() == {"clients": 200, "monitors": 1}
    assert len(hub.connections()["clients"]) == 200
