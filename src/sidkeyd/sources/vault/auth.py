"""The Vault source's token lifecycle: one owner for the token, its renewal and re-login.

hvac renews nothing by itself:

* The first ``ensure_token`` logs in (or, for ``token``, reads the token and looks it up) and
  starts a background renewer thread; ``stop()`` stops it. A login or renewal in progress when
  the source closes stops before its next step (``source_closed``).
* The renewer renews the token at two thirds of its TTL. When a renewal is refused, or when the
  granted TTL comes back shorter than the TTL obtained at login (the max TTL is capping it), it
  logs in again. A failed renewal or login (Vault down, sealed) is retried on the shared
  backoff's ceiling (1s doubling to 60s; while the token is valid, never later than halfway to
  its expiry).
* ``ensure_token`` also replaces an expired token inline (the renewer could not reach Vault for
  a while, or the host was suspended): the timer keeps the token alive between checks; the
  check covers whatever the timer could not do.
* ``recover_from_denial`` follows a read answered 403: if the token itself is refused
  (revoked), it logs in again; if it is valid, the 403 is a policy denial.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Final

import hvac

from sidkeyd.backoff import Backoff
from sidkeyd.errors import (
    AccessLostError,
    PermanentSourceError,
    SourceError,
    TransientSourceError,
)
from sidkeyd.log import get_logger
from sidkeyd.sources.vault.errors import mapping, translating
from sidkeyd.sources.vault.login import Lease, LoginMethod, clock

RENEWAL_BACKOFF: Final = Backoff(low_s=1.0, high_s=60.0)
EXPIRY_MARGIN_S: Final = 1.0  # a token this close to expiry is treated as expired before a read


def retry_delay(failures: int, remaining: float) -> float:
    """Seconds before the renewer tries again after ``failures`` consecutive failures.

    The shared backoff's ceiling (1s doubling to 60s; no jitter: one host's renewer is no
    herd). While the token is still valid, never later than halfway to its expiry (nor sooner
    than 1s); once it has expired, the plain backoff.
    """
    backoff = RENEWAL_BACKOFF.ceiling(failures)
    if remaining <= 0:
        return backoff
    return max(RENEWAL_BACKOFF.low_s, min(backoff, remaining / 2))


class TokenLifecycle:
    """Owns the current ``Lease``, the login method's credentials and the renewer thread."""

    def __init__(
        self,
        source_name: str,
        method: LoginMethod,
        client: hvac.Client,
        closing: threading.Event,
    ) -> None:
        self._name = source_name
        self._method = method
        self._client = client
        self._closing = closing  # set by the source's close(), before it takes any lock
        # The token lock. Guards _lease, the method's credentials, _renewer and
        # _renew_failures, and is held across each login, lookup and renewal so that one
        # happens at a time. Reads never take it while the token is valid (ensure_token reads
        # the immutable _lease without it); they wait only for a token they need replaced.
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)  # a new lease, or closing
        self._lease: Lease | None = None
        self._renewer: threading.Thread | None = None
        self._renew_failures = 0

    def secrets(self) -> tuple[str, ...]:
        """The token and credentials held right now, to scrub from any error text."""
        lease = self._lease
        held = (lease.token.reveal(),) if lease is not None else ()
        return held + self._method.credentials()

    def ensure_token(self) -> Lease:
        """A usable lease: logged in on first use, replaced if it expired meanwhile."""
        lease = self._lease
        if lease is not None and not _expiring(lease):
            return lease
        with self._lock:
            lease = self._lease  # another read may have replaced it while this one waited
            if lease is None:
                lease = self._authenticate("initial")
            elif _expiring(lease):
                lease = self._authenticate("token_expired")
            self._start_renewer()
            return lease

    def recover_from_denial(self, used: Lease) -> bool:
        """After a 403 on a read made with ``used``: whether to read again with a new token.

        ``False`` when Vault still accepts the token: the 403 is a policy denial.
        """
        with self._lock:
            current = self._lease
            if current is not None and current.token is not used.token:
                return True  # replaced while the read was in flight: read with the new one
            if self._token_valid():
                return False
            self._authenticate("permission_denied")
            return True

    def stop(self) -> None:
        """Stop the renewer (the caller has set ``closing``) and wait for it a little."""
        with self._lock:
            self._wake.notify_all()
            renewer, self._renewer = self._renewer, None
        if renewer is not None and renewer is not threading.current_thread():
            renewer.join(timeout=5)

    def forget(self) -> None:
        """Drop the token and every credential."""
        with self._lock:
            self._lease = None
            self._client.token = ""
            self._method.forget()

    # -- logins (the caller holds the lock) --------------------------------------------

    def _authenticate(self, reason: str) -> Lease:
        """Obtain a fresh token with the configured method; sets ``_lease``."""
        if self._closing.is_set():
            raise TransientSourceError(f"source {self._name!r} is closed", code="source_closed")
        lease = self._method.login(self._client, self.secrets)
        self._lease = lease
        self._renew_failures = 0
        self._wake.notify_all()
        get_logger().info(
            "vault.authenticated" if reason == "initial" else "vault.reauthenticated",
            source=self._name,
            auth_method=self._method.name,
            reason=reason,
            ttl_s=lease.ttl,
            renewable=lease.renewable,
        )
        return lease

    def _token_valid(self) -> bool:
        """Whether Vault still accepts the current token (after a 403 on a read)."""
        try:
            with translating("looking up the token", self.secrets):
                self._client.auth.token.lookup_self()
        except AccessLostError:
            return False  # revoked or expired (or lookup-self denied: logging in is harmless)
        return True

    # -- renewal -----------------------------------------------------------------------

    def _start_renewer(self) -> None:
        if self._renewer is None and not self._closing.is_set():
            self._renewer = threading.Thread(
                target=self._renew_loop, name=f"sidkeyd-vault-renew-{self._name}", daemon=True
            )
            self._renewer.start()

    def _renew_loop(self) -> None:
        with self._lock:
            while not self._closing.is_set():
                delay = self._renewal_delay(clock())
                if delay is None or delay > 0:
                    self._wake.wait(delay)  # woken early by a new lease or close()
                    continue
                try:
                    self._renew_or_reauthenticate()
                except SourceError as exc:
                    if self._closing.is_set():
                        break
                    self._renew_failures += 1
                    get_logger().warning(
                        "vault.token_renewal_failed",
                        source=self._name,
                        auth_method=self._method.name,
                        error_kind=exc.kind,
                        error_code=exc.code,
                        reason=exc.reason,
                        consecutive_failures=self._renew_failures,
                    )
                except Exception as exc:  # a bug here must not kill the renewer silently
                    self._renew_failures += 1
                    get_logger().error(
                        "vault.token_renewal_failed",
                        source=self._name,
                        error_code="renewer_bug",
                        reason=type(exc).__name__,
                    )

    def _renewal_delay(self, now: float) -> float | None:
        """Seconds until the renewer should act; ``None`` to wait for a new lease."""
        lease = self._lease
        if lease is None or not lease.expires:
            return None
        if not lease.renewable and not self._method.logs_in:
            # Nothing to renew and no way to log in: the read after expiry re-reads the token.
            return None
        if self._renew_failures:
            return retry_delay(self._renew_failures, lease.remaining(now))
        return lease.renew_at() - now

    def _renew_or_reauthenticate(self) -> None:
        lease = self._lease
        assert lease is not None
        if lease.remaining(clock()) <= 0:
            self._authenticate("token_expired")
            return
        if not lease.renewable:
            self._authenticate("not_renewable")
            return
        try:
            with translating("renewing the token", self.secrets):
                response = self._client.auth.token.renew_self()
        except PermanentSourceError as exc:
            if exc.code not in ("access_denied", "invalid_request"):
                raise
            # Revoked (403), or past its max TTL / not renewable after all (400).
            self._authenticate("renewal_refused")
            return
        auth = mapping(mapping(response, "response").get("auth"), "renewal response")
        granted = float(auth.get("lease_duration") or 0)
        renewed = dataclasses.replace(
            lease, ttl=granted, renewable=bool(auth.get("renewable")), obtained_at=clock()
        )
        self._lease = renewed
        self._renew_failures = 0
        get_logger().info(
            "vault.token_renewed", source=self._name, auth_method=self._method.name, ttl_s=granted
        )
        # The max TTL caps the renewal: log in again. With a token from a file or VAULT_TOKEN,
        # switch only once Vault Agent has written a new one.
        if granted < lease.login_ttl and self._method.new_token_available(lease.token.reveal()):
            self._authenticate("max_ttl")


def _expiring(lease: Lease) -> bool:
    return lease.expires and lease.remaining(clock()) < EXPIRY_MARGIN_S
