"""The Vault token lifecycle's locking: reads and renewals do not wait for each other."""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any

import hvac

from sidkeyd.held import HeldSecret
from sidkeyd.sources.vault.auth import TokenLifecycle
from sidkeyd.sources.vault.login import Lease, Secrets, clock

WAIT = 10.0


class FakeLogin:
    """A login method whose token is due for renewal at once, with 9s left before expiry."""

    name = "approle"
    logs_in = True

    def login(self, client: hvac.Client, secrets: Secrets) -> Lease:
        return Lease(HeldSecret("token"), 30.0, True, clock() - 21.0, 30.0)

    def new_token_available(self, held: str) -> bool:
        return False

    def credentials(self) -> tuple[str, ...]:
        return ()

    def forget(self) -> None:
        return None


def test_a_read_does_not_wait_behind_a_renewal_in_flight() -> None:
    """While the renewer is inside its renew call, a read still gets the valid token."""
    renewing, release = threading.Event(), threading.Event()

    def renew_self() -> dict[str, Any]:
        renewing.set()
        release.wait(WAIT)
        return {"auth": {"lease_duration": 30, "renewable": True}}

    client: Any = SimpleNamespace(
        token="", auth=SimpleNamespace(token=SimpleNamespace(renew_self=renew_self))
    )
    closing = threading.Event()
    tokens = TokenLifecycle("vault", FakeLogin(), client, closing)
    got: list[Lease] = []
    try:
        first = tokens.ensure_token()
        assert renewing.wait(WAIT)  # the renewer holds the token lock, its call in flight
        reader = threading.Thread(target=lambda: got.append(tokens.ensure_token()))
        reader.start()
        reader.join(WAIT)
        returned_during_renewal = not release.is_set()
    finally:
        closing.set()
        release.set()
        tokens.stop()

    assert ([first], True) == (got, returned_during_renewal)
