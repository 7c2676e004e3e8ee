"""sidkeyd.aio against the daemon as a real process: AsyncSignature and AsyncClient."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from test_daemon import ALL_KEYS, CONFIG, KEYS, ROTATED_KEY, SANDBOX_KEY

from sidkeyd.aio import AsyncClient, AsyncSignature
from sidkeyd.client import PartnerMismatchError, placeholder_key
from support.daemon import Daemon
from support.signatures import expected_signature


@pytest.fixture
def daemon(start_daemon: Callable[..., Daemon]) -> Iterator[Daemon]:
    daemon = start_daemon(CONFIG, files={"keys.toml": KEYS})
    yield daemon
    daemon.assert_no_secret_in_logs(ALL_KEYS)


def test_async_signature_signs_with_the_daemons_key_and_confirms(daemon: Daemon) -> None:
    """``AsyncSignature(partner_id, placeholder)``: a correct signature, confirmed by verify."""

    async def run() -> tuple[str, str, bool]:
        signer = AsyncSignature("085", placeholder_key("sandbox"), socket=daemon.socket_path)
        signed = await signer.generate_signature()
        confirmed = await signer.confirm_signature(signed["timestamp"], signed["signature"])
        await signer.close()
        return signed["signature"], signed["timestamp"], confirmed

    signature, timestamp, confirmed = asyncio.run(run())
    assert (expected_signature(SANDBOX_KEY, timestamp, "085"), True) == (signature, confirmed)


def test_a_wrong_partner_id_is_an_error(daemon: Daemon) -> None:
    """AsyncSignature with partner 999 against a daemon signing for 085 raises."""

    async def run() -> None:
        signer = AsyncSignature("999", environment="sandbox", socket=daemon.socket_path)
        try:
            await signer.generate_signature()
        finally:
            await signer.close()

    with pytest.raises(PartnerMismatchError):
        asyncio.run(run())


def test_one_client_serves_many_concurrent_tasks(daemon: Daemon) -> None:
    """100 tasks sharing one AsyncClient each get their own correct signature."""

    async def run() -> list[dict[str, str]]:
        async with AsyncClient(daemon.socket_path) as client:
            return await asyncio.gather(*(client.sign("sandbox") for _ in range(100)))

    answers = asyncio.run(run())
    wrong = [
        a
        for a in answers
        if a["signature"] != expected_signature(SANDBOX_KEY, a["timestamp"], "085")
    ]
    assert (100, []) == (len(answers), wrong)


@dataclass
class Response:
    status_code: int


def test_send_signed_reports_a_rejection_and_retries_with_the_new_key(daemon: Daemon) -> None:
    """Rotated at the backend, refused by Smile ID: one report, one retry with the new key."""
    (daemon.config_path.parent / "keys.toml").write_text(KEYS.replace(SANDBOX_KEY, ROTATED_KEY))
    sent: list[dict[str, str]] = []

    async def smile_id(signed: dict[str, str]) -> Response:
        sent.append(signed)
        good = expected_signature(ROTATED_KEY, signed["timestamp"], "085")
        return Response(200 if signed["signature"] == good else 401)

    async def run() -> Response:
        async with AsyncClient(daemon.socket_path) as client:
            return await client.send_signed("sandbox", smile_id)

    assert (200, 2) == (asyncio.run(run()).status_code, len(sent))
    daemon.wait_for_event("key.rotated", environment="sandbox", trigger="report")


def test_a_connection_the_daemon_closed_is_reopened_once(daemon: Daemon) -> None:
    """The kept-alive connection was closed under the client: the next request still works."""

    async def run() -> dict[str, str]:
        async with AsyncClient(daemon.socket_path) as client:
            await client.sign("sandbox")
            assert client._writer is not None
            client._writer.transport.abort()  # as the daemon's idle timeout would
            await asyncio.sleep(0)  # let the loop process the abort
            return await client.sign("sandbox")

    assert "sandbox" == asyncio.run(run())["environment"]
