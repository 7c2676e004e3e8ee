"""Issue 12: the real ``usesmileid`` SDK (Smile ID V3) through sidkeyd, holding a placeholder.

The SDK's token requests are answered by the daemon (a real process) over its socket; its V3
calls go to a fake V3 API over HTTPS that refuses any token not minted with the current key.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterator

import httpx
import pytest
import usesmileid
from test_tokens import CONFIG, KEY, NEW_KEY, PARTNER_ID, keys
from usesmileid.errors import SmileIDError

from sidkeyd.integrations.usesmileid import client
from support.daemon import ALL_SECRETS, Daemon
from support.fake_smileid_v3 import FakeV3, fake_v3
from support.schedules import NO_SCHEDULE

StartDaemon = Callable[..., Daemon]


@pytest.fixture
def fake() -> Iterator[FakeV3]:
    with fake_v3(PARTNER_ID, KEY) as fake:
        yield fake
        ALL_SECRETS.update(fake.issued)


@pytest.fixture
def daemon(start_daemon: StartDaemon, fake: FakeV3) -> Daemon:
    config = (
        CONFIG.replace("@URL@", fake.url)
        .replace("@CA@", str(fake.ca_file))
        .replace("@REFRESH@", NO_SCHEDULE)
    )
    return start_daemon(config, files={"keys.toml": keys(KEY)})


def smile(daemon: Daemon, fake: FakeV3) -> usesmileid.Client:
    return client(
        PARTNER_ID,
        "sandbox",
        socket=daemon.socket_path,
        verify=ssl.create_default_context(cafile=fake.ca_file),
        base_url=fake.url,
        max_retries=0,
    )


def test_the_sdk_calls_smile_id_with_a_token_from_sidkeyd(daemon: Daemon, fake: FakeV3) -> None:
    """verifications.retrieve works; the one /v3/token call was sidkeyd's, with the real key."""
    with smile(daemon, fake) as sdk:
        status = sdk.verifications.retrieve("job-1")
        again = sdk.verifications.retrieve("job-2")
    assert ("clear", "job-2", 1, 0) == (status.status, again.job_id, fake.token_calls, fake.refused)
    daemon.assert_no_secret_in_logs([KEY, *fake.issued])


def test_without_sidkeyd_the_placeholder_is_refused(fake: FakeV3) -> None:
    """The same SDK with the placeholder and no sidkeyd: Smile ID refuses the token request."""
    plain = usesmileid.Client(
        partner_id=PARTNER_ID,
        api_key="sidkeyd:sandbox",
        base_url=fake.url,
        max_retries=0,
        http_client=httpx.Client(verify=ssl.create_default_context(cafile=fake.ca_file)),
    )
    with plain, pytest.raises(SmileIDError):
        plain.verifications.retrieve("job-1")
    assert 1 == fake.refused


def test_a_rotation_mid_run_costs_one_refused_call(daemon: Daemon, fake: FakeV3) -> None:
    """Rotated in the backend and at Smile ID, nothing told sidkeyd: the SDK's next call is
    refused once (401), reported, and its retry succeeds with a token from the new key."""
    with smile(daemon, fake) as sdk:
        sdk.verifications.retrieve("job-1")
        (daemon.config_path.parent / "keys.toml").write_text(keys(NEW_KEY))
        fake.rotate(NEW_KEY)
        after = sdk.verifications.retrieve("job-2")
    rotated = daemon.wait_for_event("key.rotated", environment="sandbox")
    daemon.wait_for_event("token.rejection_reported", environment="sandbox")
    # Refused: the call with the old token, and sidkeyd's /v3/token with the old key.
    assert ("clear", 2, "token") == (after.status, fake.refused, rotated["trigger"])
    daemon.assert_no_secret_in_logs([KEY, NEW_KEY, *fake.issued])
