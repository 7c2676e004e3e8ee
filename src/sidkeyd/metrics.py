"""Prometheus metrics with ``prometheus_client``: counters on the way, gauges at scrape time.

The sign path pays for two integer additions and a bisect: its counter and latency histogram
are plain numbers of this loop's (no lock, no label lookup), exported at scrape time beside the
rest. Everything about the keys and environments (age, version, health, failures) and the
open connections is read from the engine when a scrape asks, in a custom collector, so it costs
nothing between scrapes.

A fleet's rotation convergence is one query: ``count by (key_version) (sidkeyd_key_info)``.
The ``fingerprint`` label is a slow hash of the key (scrypt, as content versions are), so that
a scrape reader learns nothing a fast guess could use.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from sidkeyd.keystore import KeySnapshot, content_version

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
SIGN_BUCKETS = (0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05)
_CHECK_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class _SignStats:
    """Signatures of one environment: a count, their seconds, and per-bucket counts."""

    __slots__ = ("buckets", "count", "seconds")

    def __init__(self) -> None:
        self.count = 0
        self.seconds = 0.0
        self.buckets = [0] * (len(SIGN_BUCKETS) + 1)  # the last: over the largest bound


class EngineView(Protocol):
    """What the scrape-time collector reads (``rotation.KeyManager``)."""

    @property
    def environments(self) -> list[str]: ...

    def signing_key(self, environment: str) -> KeySnapshot: ...

    def health(self, environment: str) -> tuple[Any, str | None]: ...

    def status(self, environment: str) -> Any: ...


class Metrics:
    """The daemon's metrics. ``NO_METRICS`` (``[metrics] enabled = false``) does nothing."""

    def __init__(self, environments: Iterable[str]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        names = list(environments)
        self._verified = Counter(
            "sidkeyd_signatures_verified", "Signatures verified, by result",
            ["environment", "valid"], registry=self.registry,
        )  # fmt: skip
        self._rejected = Counter(
            "sidkeyd_requests_rejected", "Requests refused, by reason", ["reason"],
            registry=self.registry,
        )  # fmt: skip
        self._tokens = Counter(
            "sidkeyd_tokens_issued", "Smile ID V3 tokens handed out", ["environment"],
            registry=self.registry,
        )  # fmt: skip
        self._checks = Counter(
            "sidkeyd_key_checks", "Backend checks, by trigger and result",
            ["environment", "trigger", "result"], registry=self.registry,
        )  # fmt: skip
        self._check_time = Histogram(
            "sidkeyd_key_check_duration_seconds", "Backend check duration", ["environment"],
            buckets=_CHECK_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self._audit_failures = Counter(
            "sidkeyd_audit_write_failures", "Audit records not written, by reason", ["reason"],
            registry=self.registry,
        )  # fmt: skip
        self.signs = {name: _SignStats() for name in names}  # read by the collector

    def track(self, environments: Iterable[str]) -> None:
        """A reload's environments: counters of the kept ones go on, removed ones go."""
        names = set(environments)
        for name in self.signs.keys() - names:
            del self.signs[name]  # in place: the collector holds this dict
        for name in names:
            self.signs.setdefault(name, _SignStats())

    def signed(self, environment: str, started_ns: int) -> None:
        stats = self.signs[environment]
        seconds = (time.perf_counter_ns() - started_ns) / 1e9
        stats.count += 1
        stats.seconds += seconds
        stats.buckets[bisect.bisect_left(SIGN_BUCKETS, seconds)] += 1

    def verified(self, environment: str, valid: bool) -> None:
        self._verified.labels(environment, "true" if valid else "false").inc()

    def rejected(self, reason: str) -> None:
        self._rejected.labels(reason).inc()

    def token_issued(self, environment: str) -> None:
        self._tokens.labels(environment).inc()

    def audit_failed(self, reason: str) -> None:
        self._audit_failures.labels(reason).inc()

    def checked(self, environment: str, trigger: str, result: str, seconds: float) -> None:
        self._checks.labels(environment, trigger, result).inc()
        self._check_time.labels(environment).observe(seconds)

    def watch(self, engine: EngineView, open_connections: Callable[[], int]) -> None:
        """Register the scrape-time collector over the engine and the connection count."""
        self.registry.register(_StateCollector(engine, open_connections, self.signs))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _NoMetrics(Metrics):
    def __init__(self) -> None:
        self.registry = CollectorRegistry()

    def track(self, environments: Iterable[str]) -> None:
        pass

    def signed(self, environment: str, started_ns: int) -> None:
        pass

    def verified(self, environment: str, valid: bool) -> None:
        pass

    def rejected(self, reason: str) -> None:
        pass

    def token_issued(self, environment: str) -> None:
        pass

    def audit_failed(self, reason: str) -> None:
        pass

    def checked(self, environment: str, trigger: str, result: str, seconds: float) -> None:
        pass

    def watch(self, engine: EngineView, open_connections: Callable[[], int]) -> None:
        pass


NO_METRICS: Metrics = _NoMetrics()


class _StateCollector(Collector):
    def __init__(
        self,
        engine: EngineView,
        open_connections: Callable[[], int],
        signs: dict[str, _SignStats],
    ) -> None:
        self._engine = engine
        self._open_connections = open_connections
        self._signs = signs
        self._fingerprints: dict[tuple[str, str], str] = {}  # (environment, version) -> slow

    def collect(self) -> Iterable[Any]:
        info = GaugeMetricFamily(
            "sidkeyd_key_info",
            "The key in use (1)",
            labels=["environment", "key_version", "fingerprint"],
        )
        age = GaugeMetricFamily(
            "sidkeyd_key_age_seconds", "Since the key in use was loaded", labels=["environment"]
        )
        failures = GaugeMetricFamily(
            "sidkeyd_key_consecutive_failures", "Failed checks in a row", labels=["environment"]
        )
        health = GaugeMetricFamily(
            "sidkeyd_environment_health", "1 for the current state", labels=["environment", "state"]
        )
        for name in self._engine.environments:
            status = self._engine.status(name)
            failures.add_metric([name], status.consecutive_failures)
            state, _reason = self._engine.health(name)
            for each in ("healthy", "degraded", "unavailable"):
                health.add_metric([name, each], 1.0 if str(state) == each else 0.0)
            try:
                key = self._engine.signing_key(name)
            except Exception:  # refusing to sign: no key in use to describe
                continue
            info.add_metric([name, key.version, self._fingerprint(name, key)], 1.0)
            age.add_metric([name], time.time() - key.loaded_epoch)
        connections = GaugeMetricFamily("sidkeyd_open_connections", "Open client connections")
        connections.add_metric([], self._open_connections())
        issued = CounterMetricFamily(
            "sidkeyd_signatures_issued", "Signatures issued", labels=["environment"]
        )
        latency = HistogramMetricFamily(
            "sidkeyd_sign_duration_seconds",
            "Time in the sign route, per signature",
            labels=["environment"],
        )
        for name, stats in self._signs.items():
            issued.add_metric([name], stats.count)
            cumulative, running = [], 0
            for bound, count in zip((*map(str, SIGN_BUCKETS), "+Inf"), stats.buckets, strict=True):
                running += count
                cumulative.append((bound, running))
            latency.add_metric([name], cumulative, stats.seconds)
        return [info, age, failures, health, connections, issued, latency]

    def _fingerprint(self, environment: str, key: KeySnapshot) -> str:
        cache_key = (environment, key.version)
        fingerprint = self._fingerprints.get(cache_key)
        if key.api_key is None:  # a remote signer's: its fingerprint names no key material
            return key.fingerprint
        if fingerprint is None:
            slow = content_version("sidkeyd-metrics-fingerprint", key.api_key.reveal(), None)
            fingerprint = slow.removeprefix("scrypt:")[:12]
            if len(self._fingerprints) > 64:
                self._fingerprints.clear()
            self._fingerprints[cache_key] = fingerprint
        return fingerprint
