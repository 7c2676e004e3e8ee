"""sidkeyd.client.Signature: smile-id-core's call forms, and the api_key never kept or shown."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from sidkeyd.client import (
    ClientError,
    DaemonUnavailableError,
    PartnerMismatchError,
    Signature,
    placeholder_key,
)

KEY_LIKE = "sk-live-6f1c0e3a9b7d42e58c1f0a2b3c4d5e6f"  # what a user might still pass as api_key


class StubClient:
    """Answers like the daemon for partner 085; records what it was asked."""

    def __init__(self, partner_id: str = "085") -> None:
        self.partner_id = partner_id
        self.asked: list[tuple[str, ...]] = []

    def sign(self, environment: str, timestamp: str | None = None) -> dict[str, Any]:
        self.asked.append(("sign", environment))
        return {
            "signature": "c2lnbmF0dXJl",
            "timestamp": timestamp or "2026-11-25T22:04:11.123Z",
            "partner_id": self.partner_id,
            "environment": environment,
            "key_version": "v1",
        }

    def verify(self, environment: str, timestamp: str, signature: str) -> dict[str, Any]:
        self.asked.append(("verify", environment, timestamp, signature))
        return {"valid": signature == "c2lnbmF0dXJl"}

    def status(self) -> dict[str, Any]:
        return {"environments": {"sandbox": {"partner_id": self.partner_id}}}


@pytest.fixture(autouse=True)
def no_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SIDKEYD_ENVIRONMENT", raising=False)


def signature(*args: Any, **kwargs: Any) -> tuple[Signature, StubClient]:
    client = StubClient()
    return Signature(*args, client=client, **kwargs), client  # type: ignore[arg-type]


def test_positional_partner_id_and_placeholder_key_name_the_environment() -> None:
    """``Signature(partner_id, "sidkeyd:sandbox")`` signs in sandbox."""
    signer, client = signature("085", placeholder_key("sandbox"))
    signer.generate_signature()
    assert [("sign", "sandbox")] == client.asked


def test_keyword_partner_id_and_api_key_are_accepted() -> None:
    """``Signature(partner_id=..., api_key=...)`` works as in smile-id-core."""
    signer, _ = signature(partner_id="085", api_key=placeholder_key("sandbox"))
    assert "c2lnbmF0dXJl" == signer.generate_signature()["signature"]


def test_confirm_signature_takes_msg_signature_by_keyword() -> None:
    """``confirm_signature(timestamp, msg_signature=...)``, smile-id-core's parameter name."""
    signer, _ = signature("085", placeholder_key("sandbox"))
    assert signer.confirm_signature("2026-11-25T22:04:11.123Z", msg_signature="c2lnbmF0dXJl")


def test_explicit_environment_wins_over_the_variable_and_the_placeholder(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``environment=`` first, then ``$SIDKEYD_ENVIRONMENT``, then the placeholder."""
    monkeypatch.setenv("SIDKEYD_ENVIRONMENT", "staging")
    explicit, _ = signature("085", placeholder_key("sandbox"), environment="production")
    from_variable, _ = signature("085", placeholder_key("sandbox"))
    assert ("production", "staging") == (explicit.environment, from_variable.environment)


def test_no_environment_at_all_is_an_error_not_production() -> None:
    """``Signature()`` with nothing naming an environment fails and says how to name one."""
    with pytest.raises(ClientError, match="SIDKEYD_ENVIRONMENT") as raised:
        Signature()
    assert "production" not in str(raised.value)


def test_a_partner_id_the_daemon_does_not_sign_for_is_an_error() -> None:
    """partner_id 999 against a daemon signing for 085: a clear error, no signature."""
    signer, _ = signature("999", placeholder_key("sandbox"))
    with pytest.raises(PartnerMismatchError, match=r"'999'.*'085'"):
        signer.generate_signature()


def test_a_partner_mismatch_is_found_before_a_confirm_too() -> None:
    """confirm_signature with the wrong partner_id fails rather than answering False."""
    signer, client = signature("999", placeholder_key("sandbox"))
    with pytest.raises(PartnerMismatchError):
        signer.confirm_signature("t", "c2lnbmF0dXJl")
    assert [] == [a for a in client.asked if a[0] == "verify"]


def test_a_key_passed_as_api_key_is_never_kept_or_shown(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A real-looking key: not in repr, attributes, or any exception message or log line."""
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("SIDKEYD_SOCKET", str(tmp_path / "no-daemon.sock"))
    shown: list[str] = []
    with pytest.raises(ClientError) as no_environment:
        Signature("085", KEY_LIKE)
    shown.append(str(no_environment.value))
    monkeypatch.setenv("SIDKEYD_ENVIRONMENT", "sandbox")
    signer = Signature("085", KEY_LIKE)
    shown += [repr(signer), repr(vars(signer))]
    with pytest.raises(DaemonUnavailableError) as unreachable:
        signer.generate_signature()
    shown.append(str(unreachable.value))
    mismatched, _ = signature("999", KEY_LIKE)
    with pytest.raises(PartnerMismatchError) as mismatch:
        mismatched.generate_signature()
    shown += [str(mismatch.value), caplog.text]
    assert [] == [text for text in shown if KEY_LIKE in text]
