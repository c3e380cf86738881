"""Every service on a TLS Redis (``rediss://``), and a worker that cannot start exits non-zero.

The server is a real redis-server with a TLS port and a certificate of a CA made here with
the ``openssl`` command; the module is skipped where the server was built without TLS or
there is no ``openssl``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests

from emp_tasks.local_redis import find_server_binary, free_port
from tests.conftest import ROOT, ServerProcess, WorkerProcess, wait_for

ADMIN = "tok-tls-admin"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _certificates(folder: Path) -> Path:
    """A CA and a server certificate for localhost signed by it; the CA file's path."""
    # The extensions Python 3.13's strict verification asks of a CA and a server certificate.
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
             "ca.crt", "-days", "2", "-subj", "/CN=emp-test-ca",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             "-addext", "subjectKeyIdentifier=hash", cwd=folder)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out",
             "server.csr", "-subj", "/CN=localhost", cwd=folder)
    (folder / "san.cnf").write_text(
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid,issuer\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "san.cnf",
             cwd=folder)
    return folder / "ca.crt"


@pytest.fixture(scope="module")
def tls_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``rediss://localhost:<port>/0?ssl_ca_certs=<CA>``: no ``ssl_cert_reqs``, so the
    certificate is verified (redis-py's default) and nothing says so in the URL."""
    if shutil.which("openssl") is None:
        pytest.skip("no openssl command to make certificates with")
    folder = tmp_path_factory.mktemp("tls")
    ca = _certificates(folder)
    port = free_port()
    process = subprocess.Popen(
        [find_server_binary(), "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", "server.crt", "--tls-key-file", "server.key",
         "--tls-ca-cert-file", "ca.crt", "--tls-auth-clients", "no", "--save", "",
         "--appendonly", "no", "--dir", str(folder)],
        cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"rediss://localhost:{port}/0?ssl_ca_certs={ca}"
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5)
    deadline = time.monotonic() + 15
    while True:
        if process.poll() is not None:
            output = process.stdout.read().decode(errors="replace") if process.stdout else ""
            pytest.skip(f"this redis-server has no TLS ({output.strip()[-200:]})")
        try:
            if client.ping():
                break
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                process.kill()
                raise
            time.sleep(0.05)
    client.close()
    yield url
    process.kill()
    process.wait(timeout=15)


def test_every_service_runs_on_a_rediss_url_without_ssl_cert_reqs(
    tls_url: str, tmp_path: Path
) -> None:
    """Tried: the worker, the API, the webhook service and the monitor on one
    ``rediss://`` URL naming the CA and no ``ssl_cert_reqs``, then a job over REST.

    Before: the API, webhooks and monitor ran and the API took the job, but the worker
    exited at once ("Unrecoverable error: ... A rediss:// URL must have parameter
    ssl_cert_reqs": Celery's result backend refuses such a URL, redis-py does not), so
    the job waited for ever. Now the result backend verifies the certificate as redis-py
    does: the worker completes the job and Celery's result is readable on the same URL."""
    env = {"EMP_ADMIN_TOKENS": ADMIN}
    servers = [ServerProcess(name, tls_url, tmp_path, env)
               for name in ("api", "webhooks", "monitor")]
    worker = WorkerProcess(tls_url, tmp_path, "w-tls", {}, [])
    try:
        for server in servers:
            server.start(timeout=60)
        worker.wait_ready(timeout=60)
        api = servers[0]
        answer = requests.post(f"{api.base}/api/jobs", json={
            "service_required": "echo", "payload": {"word": "tls"}},
            headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10)
        assert answer.status_code == 201, answer.text
        job_id = answer.json()["job_id"]

        def finished() -> dict | None:
            record = requests.get(f"{api.base}/api/jobs/{job_id}", timeout=10,
                                  headers={"Authorization": f"Bearer {ADMIN}"}).json()["job"]
            return record if record.get("status") in ("completed", "failed") else None

        record = wait_for(finished, timeout=60, message="the job to finish on TLS Redis")
        assert record["status"] == "completed", record
        monitor = servers[2]  # its pages read the job through Redis and Celery's backend
        page = requests.get(f"{monitor.base}/emp/api/jobs/{job_id}", timeout=20)
        assert page.status_code == 200 and page.json()["job"]["status"] == "completed", page.text
        result = subprocess.run(
            [sys.executable, "-c", "import sys; from emp_tasks.app import app; "
             "print(app.AsyncResult(sys.argv[1]).get(timeout=20))", job_id],
            env={**os.environ, "EMP_REDIS_URL": tls_url, "PYTHONPATH": str(ROOT)},
            capture_output=True, text=True, timeout=60)
        assert result.returncode == 0 and "tls" in result.stdout, result.stderr[-2000:]
    finally:
        worker.kill()
        for server in servers:
            server.kill()


def test_a_worker_celery_cannot_start_exits_non_zero(tls_url: str, tmp_path: Path) -> None:
    """Tried: ``emp worker`` with a result backend setting Celery refuses at the worker's
    start (``redis_backend_use_ssl = {"ssl_cert_reqs": "bogus"}`` in the Celery config).

    Before: Celery logged "Unrecoverable error" and ``emp worker`` exited 0 (Celery's
    ``worker_main`` drops the worker's status), so supervisord took it for a clean stop
    and the machine said nothing; ``celery worker`` exits 1. Now ``emp worker`` exits 1."""
    (tmp_path / "bad_tls_config.py").write_text(
        'redis_backend_use_ssl = {"ssl_cert_reqs": "bogus"}\n')
    env = {**os.environ, "EMP_REDIS_URL": tls_url, "WORKER_ID": "w-bad",
           "PYTHONPATH": f"{ROOT}:{tmp_path}", "EMP_CELERY_CONFIG": "bad_tls_config"}
    done = subprocess.run([sys.executable, "-m", "emp_tasks.cli", "worker", "-l", "warning"],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=90)
    assert "Unrecoverable error" in done.stdout + done.stderr, done.stderr[-2000:]
    assert done.returncode == 1, (done.returncode, done.stderr[-2000:])
