"""The comfyui-remote connector: basic and bearer auth, TLS verification, on HTTP and wss."""

from __future__ import annotations

import pytest
from comfyui_server import txt2img
from machine_fixtures import *  # noqa: F403 - pytest fixtures

from machine.connectors import ConnectorError, ErrorType, JobInput, make_connector


def run_one(connector) -> dict:  # noqa: ANN001 - a connector
    connector.initialize()
    output = connector.run_job(JobInput("remote-job", "comfyui", {"workflow": txt2img(steps=2)}),
                               lambda report: None)
    assert output.success and len(output.output_files) == 1
    return output.as_dict()


@pytest.mark.parametrize("credentials", [
    {"username": "emp", "password": "s3cret"},
    {"api_token": "tok-123"},
], ids=["basic", "bearer"])
def test_auth_is_sent_on_http_and_websocket(start_comfyui, store, credentials) -> None:
    server = start_comfyui(username=credentials.get("username"),
                           password=credentials.get("password"),
                           token=credentials.get("api_token"))
    run_one(make_connector("comfyui-remote", {"url": server.url, "output_store": store,
                                              **credentials}))
    assert "GET /ws" in server.requests

    wrong = {k: "wrong" for k in credentials}
    connector = make_connector("comfyui-remote", {"url": server.url, **wrong})
    with pytest.raises(ConnectorError, match="HTTP 401"):
        connector.initialize()
    with pytest.raises(ConnectorError, match="401"):
        connector.run_job(JobInput("x", "comfyui", {"workflow": txt2img()}), lambda r: None)


def test_tls_with_a_ca_bundle_and_auth(start_comfyui, store, tls_cert) -> None:
    server = start_comfyui(tls=tls_cert, token="tok")
    assert server.url.startswith("https://")
    result = run_one(make_connector("comfyui-remote", {
        "url": server.url, "api_token": "tok", "ca_bundle": tls_cert[0],
        "output_store": store}))
    assert result["output_files"][0]["size"] > 0


def test_tls_is_verified_by_default_and_can_be_turned_off(start_comfyui, store, tls_cert) -> None:
    server = start_comfyui(tls=tls_cert)
    untrusted = make_connector("comfyui-remote", {"url": server.url,
                                                  "startup_timeout_seconds": 0.1})
    with pytest.raises(ConnectorError) as caught:
        untrusted.initialize()
    assert caught.value.error_type == ErrorType.NETWORK and "CERTIFICATE" in str(caught.value)
    run_one(make_connector("comfyui-remote", {"url": server.url, "verify_tls": "false",
                                              "output_store": store}))


def test_remote_needs_a_url() -> None:
    with pytest.raises(ConnectorError) as caught:
        make_connector("comfyui-remote", {})
    assert caught.value.error_type == ErrorType.VALIDATION
