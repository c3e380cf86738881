"""The model catalog over REST (``/api/models``): a real ``emp api`` and real Redis."""

from __future__ import annotations

import pytest
from rest_helpers import ADMIN, TOKEN_A, TOKENS_ENV, Api, snapshot

from capability_router import catalog

SHA = "ab" * 32
ENTRY = {"url": "http://models.example/sd15.safetensors", "size": 4096, "sha256": SHA}


@pytest.fixture
def admin(client, start_server) -> Api:
    return Api(start_server("api", **TOKENS_ENV).base, ADMIN)


@pytest.mark.timeout(60)
def test_admin_puts_reads_lists_and_deletes_entries(admin, client) -> None:
    created = admin.session.put(admin.base + "/api/models/sd15", json=ENTRY, timeout=30)
    assert created.status_code == 201 and created.json()["model"]["name"] == "sd15"
    replaced = admin.session.put(admin.base + "/api/models/sd15",
                                 json={**ENTRY, "size": 8192, "sha256": SHA.upper()},
                                 timeout=30)
    assert replaced.status_code == 200 and replaced.json()["created"] is False
    admin.session.put(admin.base + "/api/models/flux-dev", json=ENTRY, timeout=30)

    # What machines read is what the API wrote (checksum normalized to lowercase).
    assert catalog.get_model(client, "sd15") == catalog.ModelEntry(
        "sd15", ENTRY["url"], 8192, SHA)
    customer = admin.as_(TOKEN_A)
    listed = customer.get("/api/models").json()["models"]
    assert [m["name"] for m in listed] == ["flux-dev", "sd15"]
    assert customer.get("/api/models/sd15").json()["model"]["size"] == 8192

    assert admin.delete("/api/models/sd15").json()["deleted"] is True
    assert admin.get("/api/models/sd15").status_code == 404
    assert admin.delete("/api/models/sd15").status_code == 404
    assert [e.name for e in catalog.list_models(client)] == ["flux-dev"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("name", "body", "field"), [
    ("sd15", {**ENTRY, "url": "ftp://host/file"}, "url"),
    # An unmatched '[' made urlparse raise: the fuzz test got a 500.
    ("sd15", {**ENTRY, "url": "https://o>[d/model"}, "url"),
    # A port past 65535: accepted, then every download of it failed to parse.
    ("sd15", {**ENTRY, "url": "http://models.example:99999/x"}, "url"),
    ("sd15", {**ENTRY, "size": 0}, "size"),
    ("sd15", {**ENTRY, "size": "big"}, "size"),
    ("sd15", {**ENTRY, "sha256": "1234"}, "sha256"),
    ("sd15", {"url": ENTRY["url"], "size": 1}, "sha256"),
    ("sd15", {**ENTRY, "colour": "red"}, "colour"),
    ("sd15", {**ENTRY, "name": "other"}, "name"),
    (".hidden", ENTRY, "name"),
])
def test_bad_entries_are_refused_naming_the_field_and_write_nothing(
        admin, client, name, body, field) -> None:
    before = snapshot(client)
    response = admin.session.put(f"{admin.base}/api/models/{name}", json=body, timeout=30)
    assert response.status_code == 400, response.text
    assert field in response.json()["error"]
    assert snapshot(client) == before


@pytest.mark.timeout(60)
def test_only_an_admin_writes_the_catalog(admin, client) -> None:
    customer = admin.as_(TOKEN_A)
    assert customer.session.put(admin.base + "/api/models/sd15", json=ENTRY,
                                timeout=30).status_code == 403
    assert admin.as_(None).get("/api/models").status_code == 401
    catalog.put_model(client, catalog.parse_entry("sd15", ENTRY))
    assert customer.delete("/api/models/sd15").status_code == 403
    assert catalog.get_model(client, "sd15") is not None


@pytest.mark.timeout(60)
def test_a_customer_reads_the_catalog_without_its_url_secrets(admin, client) -> None:
    """An admin puts a private mirror's URL carrying credentials and a signed
    query. Before: every customer token read them whole from ``GET /api/models``
    and ``GET /api/models/<name>``. Now a customer sees them masked; an admin,
    who may edit the entry, still reads the URL as written."""
    url = "https://studio:s3cret@mirror.example/sd15.safetensors?sig=t0ken"
    assert admin.session.put(admin.base + "/api/models/sd15", json={**ENTRY, "url": url},
                             timeout=30).status_code == 201
    customer = admin.as_(TOKEN_A)
    for shown in (customer.get("/api/models").json()["models"][0]["url"],
                  customer.get("/api/models/sd15").json()["model"]["url"]):
        assert shown == "https://studio:***@mirror.example/sd15.safetensors?***"
    assert admin.get("/api/models/sd15").json()["model"]["url"] == url
    assert admin.get("/api/models").json()["models"][0]["url"] == url
