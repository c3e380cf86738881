"""Bearer tokens over REST: customers see only their own jobs, admins everything."""

from __future__ import annotations

import pytest
from rest_helpers import ADMIN, TOKEN_A, TOKEN_B, TOKENS_ENV, Api, snapshot


@pytest.fixture
def server(client, start_server) -> Api:
    """A server with two customer tokens and one admin token; unauthenticated client."""
    return Api(start_server("api", **TOKENS_ENV).base)


PROTECTED = [("post", "/api/jobs"), ("get", "/api/jobs"), ("get", "/api/jobs/x"),
             ("post", "/api/jobs/x/cancel"), ("post", "/api/jobs/x/retry"),
             ("delete", "/api/machines/m1"), ("get", "/api/connections")]


@pytest.mark.timeout(60)
def test_protected_endpoints_need_a_valid_token(server, client) -> None:
    before = snapshot(client)
    for token in (None, "wrong-token"):
        api = server.as_(token)
        for method, path in PROTECTED:
            response = getattr(api, method)(path, json={"service_required": "echo"})
            assert response.status_code == 401, (token, method, path)
            assert response.json()["success"] is False
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
    basic = server.session.post(server.base + "/api/jobs", json={"service_required": "echo"},
                                headers={"Authorization": f"Basic {TOKEN_A}"})
    assert basic.status_code == 401
    assert snapshot(client) == before
    for path in ("/health", "/version", "/api/openapi.json"):
        assert server.get(path).status_code == 200, path
    # Clients that cannot set headers pass the token as ?token=.
    response = server.get("/api/jobs", params={"token": TOKEN_A})
    assert response.status_code == 200


@pytest.mark.timeout(60)
def test_customers_see_only_their_own_jobs(server, client) -> None:
    alice, bob, admin = server.as_(TOKEN_A), server.as_(TOKEN_B), server.as_(ADMIN)
    a_job = alice.submit(service_required="echo")
    b_job = bob.submit(service_required="echo", customer_id="cust-b")
    assert alice.job(a_job)["customer_id"] == "cust-a"  # the token's customer by default
    assert bob.job(b_job)["customer_id"] == "cust-b"
    # Submitting as another customer: 403, nothing written.
    before = snapshot(client)
    response = alice.post("/api/jobs", json={"service_required": "echo", "customer_id": "cust-b"})
    assert response.status_code == 403 and "customer_id" in response.json()["error"]
    assert snapshot(client) == before
    # Alice cannot read, cancel or retry Bob's job: the same 404 as for a job that does not
    # exist, so she cannot learn that it does.
    unknown = alice.get("/api/jobs/no-such-job").json()["error"]
    for method, path in [("get", f"/api/jobs/{b_job}"), ("post", f"/api/jobs/{b_job}/cancel"),
                         ("post", f"/api/jobs/{b_job}/retry")]:
        response = getattr(alice, method)(path)
        assert response.status_code == 404, (method, path)
        assert response.json()["error"] == unknown.replace("no-such-job", b_job)
    assert snapshot(client) == before
    # Listing is her own jobs only, whatever she asks for.
    assert [j["job_id"] for j in alice.get("/api/jobs").json()["jobs"]] == [a_job]
    assert alice.get("/api/jobs", params={"customer_id": "cust-a"}).json()["total"] == 1
    assert alice.get("/api/jobs", params={"status": "pending"}).json()["total"] == 1
    other = alice.get("/api/jobs", params={"customer_id": "cust-b"})
    assert other.status_code == 403 and "customer_id" in other.json()["error"]
    # Admin-only endpoints.
    assert alice.delete("/api/machines/m1").status_code == 403
    assert alice.get("/api/connections").status_code == 403
    # The admin reads, lists and cancels everyone's jobs.
    assert admin.job(b_job)["customer_id"] == "cust-b"
    assert {j["job_id"] for j in admin.get("/api/jobs").json()["jobs"]} == {a_job, b_job}
    assert admin.get("/api/jobs", params={"customer_id": "cust-b"}).json()["total"] == 1
    assert admin.post(f"/api/jobs/{b_job}/cancel").status_code == 200
    assert admin.post(f"/api/jobs/{b_job}/retry").status_code == 200
    assert admin.get("/api/connections").status_code == 200
    assert admin.delete("/api/machines/m1").status_code == 404
    # Bob still owns his job and may cancel it himself.
    assert bob.post(f"/api/jobs/{b_job}/cancel").json()["status"] == "cancelled"
    # A job submitted by the admin without a customer is the admin's alone.
    anonymous = admin.submit(service_required="echo")
    assert alice.get(f"/api/jobs/{anonymous}").status_code == 404
