"""Prometheus metrics from the daemon process, parsed with prometheus_client's own parser."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from collections.abc import Callable

from prometheus_client.parser import text_string_to_metric_families

from support.configs import file_config, key_file
from support.daemon import Daemon
from support.moto_server import free_port

StartDaemon = Callable[..., Daemon]
KEY = "metrics-e2e-key-5f0c-not-real"
FILES = key_file(KEY)


def config(metrics: str = "") -> str:
    return file_config(server='socket_group = "nogroup"', sections=metrics)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return out


def scrape(daemon: Daemon) -> str:
    daemon.client().request("GET", "/v1/health")  # a kept-alive connection stays open
    raw = daemon.raw(b"GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n").decode()
    head, _, body = raw.partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 200"), head
    assert "text/plain; version=0.0.4" in head
    return body


def test_signatures_keys_and_checks_are_counted(start_daemon: StartDaemon) -> None:
    """Three signatures, the key in use with its version, a startup check, open connections."""
    daemon = start_daemon(config(), files=FILES)
    client = daemon.client()
    version = [client.sign("sandbox") for _ in range(3)][-1]["key_version"]
    values = samples(scrape(daemon))
    sandbox = (("environment", "sandbox"),)
    assert 3.0 == values["sidkeyd_signatures_issued_total", sandbox]
    assert 3.0 == values["sidkeyd_sign_duration_seconds_count", sandbox]
    info = [labels for (name, labels) in values if name == "sidkeyd_key_info"]
    assert [version] == [dict(labels)["key_version"] for labels in info]
    checks = {
        dict(labels)["trigger"]: v
        for (n, labels), v in values.items()
        if n == "sidkeyd_key_checks_total"
    }
    assert 1.0 == checks["startup"]
    assert 1.0 == values["sidkeyd_environment_health", (*sandbox, ("state", "healthy"))]
    assert values["sidkeyd_open_connections", ()] >= 1
    daemon.assert_no_secret_in_logs([KEY])


def test_metrics_are_refused_to_a_peer_who_is_no_admin_nor_reader(
    start_daemon: StartDaemon,
) -> None:
    """Another uid in the socket's group: 403 forbidden on /metrics."""
    from test_access import NOGROUP, STRANGER, request_as

    daemon = start_daemon(config(), files=FILES)
    os.chmod(daemon.socket_path.parent, 0o755)  # let other uids reach the socket's folder
    status, body = request_as(daemon, STRANGER, NOGROUP, (), "GET", "/metrics")
    assert (403, "forbidden") == (status, body["error"]["code"])


def test_the_tcp_listener_serves_metrics_only_and_no_key(start_daemon: StartDaemon) -> None:
    """[metrics] listen on loopback: GET /metrics parses; any other path is 404; no key text."""
    port = free_port()
    daemon = start_daemon(config(f'[metrics]\nlisten = "127.0.0.1:{port}"'), files=FILES)
    daemon.client().sign("sandbox")
    daemon.wait_for_event("metrics.listening")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/sign", timeout=10)
        other = 200
    except urllib.error.HTTPError as refused:
        other = refused.code
    values = samples(text)
    assert (1.0, 404, False) == (
        values["sidkeyd_signatures_issued_total", (("environment", "sandbox"),)],
        other,
        KEY in text,
    )


def test_metrics_off_serve_an_empty_registry(start_daemon: StartDaemon) -> None:
    """[metrics] enabled = false: /metrics answers, with no sidkeyd metric in it."""
    daemon = start_daemon(config("[metrics]\nenabled = false"), files=FILES)
    daemon.client().sign("sandbox")
    assert [] == [name for (name, _) in samples(scrape(daemon)) if name.startswith("sidkeyd_")]
