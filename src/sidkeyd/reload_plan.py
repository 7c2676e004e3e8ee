"""What a config reload changes: a pure function of the old and the new ``Config``.

``plan_reload(old, new)`` sorts every environment into keep (its key stays, no backend read),
load (added, or a setting that decides what is read changed: its key is read again) or drop
(removed), lists the settings that cannot change while the daemon runs (the reload is then
refused as a whole), and names every change by its TOML key path, never by its value, so the
plan can be logged and answered as is.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from sidkeyd.config import Config, EnvironmentConfig, RefreshConfig, ServerConfig
from sidkeyd.errors import ConfigProblem

# Settings fixed at start-up: the socket is bound once (its mode, group and listen queue with
# it), memory is locked once, the metrics listener, the log format and the audit trail are set
# up once.
RESTART_REQUIRED = (
    "server.socket",
    "server.socket_mode",
    "server.socket_group",
    "server.backlog",
    "server.lock_memory",
    "metrics.enabled",
    "metrics.listen",
    "metrics.allow_remote",
    "log.format",
    # The trail's chain and its file are opened once; SIGHUP reopens the same path.
    "audit.path",
    "audit.stdout",
    "audit.on_audit_failure",
    "audit.fsync",
    "audit.fsync_interval",
    "audit.write_timeout",
    "audit.checkpoint_interval",
)
# [server] keys a reload applies: to requests (skew, rate limit), new connections, shutdown.
LIVE_SERVER_KEYS = tuple(
    f.name for f in fields(ServerConfig) if f"server.{f.name}" not in RESTART_REQUIRED
)


@dataclass(frozen=True)
class ReloadPlan:
    keep: tuple[str, ...] = ()  # environments whose key stays in place
    added: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()  # read again: a setting that decides what is read changed
    removed: tuple[str, ...] = ()
    sources_added: tuple[str, ...] = ()
    sources_changed: tuple[str, ...] = ()
    sources_removed: tuple[str, ...] = ()
    policies: tuple[str, ...] = ()  # key paths: environments.E.allow, admin, metrics.readers
    limits: tuple[str, ...] = ()  # key paths under [server]
    schedule: tuple[str, ...] = ()  # environments whose refresh settings changed
    tokens: tuple[str, ...] = ()  # environments whose Smile ID V3 settings changed
    log_level: tuple[str, str] | None = None  # (old, new)
    restart_required: tuple[ConfigProblem, ...] = ()

    @property
    def load(self) -> tuple[str, ...]:
        """Environments to read from their source, as at start-up."""
        return self.added + self.changed

    @property
    def refused(self) -> bool:
        return bool(self.restart_required)

    @property
    def changes(self) -> tuple[str, ...]:
        """Every change as ``key path: what``, for people (logs, ``sidkeyd reload``)."""
        out = [f"environments.{n}: added" for n in self.added]
        out += [f"environments.{n}: changed, its key is read again" for n in self.changed]
        out += [f"environments.{n}: removed, its key dropped" for n in self.removed]
        out += [f"sources.{n}: added" for n in self.sources_added]
        out += [f"sources.{n}: changed" for n in self.sources_changed]
        out += [f"sources.{n}: removed" for n in self.sources_removed]
        out += [f"{key}: changed" for key in self.policies + self.limits]
        out += [f"environments.{n}.refresh: changed" for n in self.schedule]
        out += [f"environments.{n}.smileid: changed" for n in self.tokens]
        if self.log_level is not None:
            out.append(f"log.level: {self.log_level[0]} -> {self.log_level[1]}")
        return tuple(out)

    def summary(self) -> dict[str, Any]:
        """The plan as log fields and JSON: names and key paths only."""
        return {
            "environments": {
                "added": list(self.added),
                "changed": list(self.changed),
                "removed": list(self.removed),
                "kept": list(self.keep),
            },
            "sources": {
                "added": list(self.sources_added),
                "changed": list(self.sources_changed),
                "removed": list(self.sources_removed),
            },
            "policies": list(self.policies),
            "limits": list(self.limits),
            "schedule": list(self.schedule),
            "tokens": list(self.tokens),
            "log_level": list(self.log_level) if self.log_level else None,
            "changes": list(self.changes),
        }


def plan_reload(old: Config, new: Config) -> ReloadPlan:
    """How to go from ``old`` to ``new`` while serving. Pure; no I/O."""
    sources_changed = _changed_keys(old.sources, new.sources)
    keep: list[str] = []
    changed: list[str] = []
    for name in sorted(set(old.environments) & set(new.environments)):
        was, now = old.environments[name], new.environments[name]
        if _what_is_read(was) != _what_is_read(now) or was.source in sources_changed:
            changed.append(name)
        else:
            keep.append(name)
    return ReloadPlan(
        keep=tuple(keep),
        added=_sorted_difference(new.environments, old.environments),
        changed=tuple(changed),
        removed=_sorted_difference(old.environments, new.environments),
        sources_added=_sorted_difference(new.sources, old.sources),
        sources_changed=tuple(sorted(sources_changed)),
        sources_removed=_sorted_difference(old.sources, new.sources),
        policies=_policy_changes(old, new),
        limits=tuple(
            f"server.{key}"
            for key in LIVE_SERVER_KEYS
            if getattr(old.server, key) != getattr(new.server, key)
        ),
        schedule=tuple(
            n for n in keep if old.environments[n].refresh != new.environments[n].refresh
        ),
        tokens=tuple(n for n in keep if old.environments[n].smileid != new.environments[n].smileid),
        log_level=(old.log.level, new.log.level) if old.log.level != new.log.level else None,
        restart_required=tuple(
            ConfigProblem(key, "needs a restart (a reload cannot change it)")
            for key in RESTART_REQUIRED
            if _lookup(old, key) != _lookup(new, key)
        ),
    )


def _what_is_read(env: EnvironmentConfig) -> EnvironmentConfig:
    """The environment without what a reload applies to a held key (policy, schedule, V3)."""
    return replace(env, allow=None, refresh=RefreshConfig(), smileid=None)


def _changed_keys(old: Any, new: Any) -> set[str]:
    return {name for name in set(old) & set(new) if old[name] != new[name]}


def _sorted_difference(these: Any, those: Any) -> tuple[str, ...]:
    return tuple(sorted(set(these) - set(those)))


def _policy_changes(old: Config, new: Config) -> tuple[str, ...]:
    keys = [
        f"environments.{name}.allow"
        for name in sorted(set(old.environments) & set(new.environments))
        if old.environments[name].allow != new.environments[name].allow
    ]
    if old.admin != new.admin:
        keys.append("admin")
    if old.metrics.readers != new.metrics.readers:
        keys.append("metrics.readers")
    return tuple(keys)


def _lookup(config: Config, key: str) -> Any:
    section, name = key.split(".")
    return getattr(getattr(config, section), name)


@dataclass(frozen=True)
class ReloadOutcome:
    """What a reload did: applied ``plan``, or refused (``code``) for ``problems``."""

    code: str  # "reloaded", "config_invalid", "restart_required" or "reload_unavailable"
    plan: ReloadPlan | None = None
    problems: tuple[ConfigProblem, ...] = ()

    @property
    def ok(self) -> bool:
        return self.code == "reloaded"

    @property
    def message(self) -> str:
        if self.ok:
            return f"reloaded: {len(self.plan.changes) if self.plan else 0} change(s)"
        if self.code == "reload_unavailable":
            return "nothing changed: the daemon is stopping"
        what = "invalid config" if self.code == "config_invalid" else "needs a restart"
        return f"nothing changed: {what}, {len(self.problems)} problem(s)"

    def to_json(self) -> dict[str, Any]:
        """The answer of ``POST /v1/reload``; refusals in the usual error shape."""
        if self.ok:
            return {"reloaded": True, **(self.plan.summary() if self.plan else {})}
        problems = [{"key": p.key, "reason": p.reason} for p in self.problems]
        return {"error": {"code": self.code, "message": self.message, "problems": problems}}
