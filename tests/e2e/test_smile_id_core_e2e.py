"""smile-id-core 3.0.1 itself, given only a placeholder key, against a strict fake Smile ID.

Every flow goes through the real SDK classes; sidkeyd runs as a real process with a file
source, and the fake checks each signature with the real key (see tests/support/fake_smileid).
"""

from __future__ import annotations

import base64
import importlib
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import smile_id_core
from smile_id_core import BusinessVerification, IdApi, ServerError, Utilities, WebApi

from sidkeyd.client import PartnerMismatchError, placeholder_key
from sidkeyd.integrations.smile_id_core import Installation, install
from support.daemon import ALL_SECRETS, Daemon
from support.fake_smileid import FakeSmileId

PARTNER = "085"
KEY = "e2e-sdk-key-3b7e61f0-not-real"
ROTATED_KEY = "e2e-sdk-rotated-key-c9d2-not-real"
ALL_KEYS = (KEY, ROTATED_KEY)
PLACEHOLDER = placeholder_key("sandbox")
CALLBACK = "https://callback.invalid/smile"
# report_interval 0s: each test's rotation is noticed at its first report.
CONFIG = """
[server]
socket = "{socket}"

[refresh]
interval = "1h"
report_interval = "0s"

[log]
format = "json"
level = "debug"

[sources.local]
type = "file"
path = "keys.toml"

[environments.sandbox]
source = "local"
secret = "smileid/sandbox"
"""


def keys_toml(key: str) -> str:
    return f'["smileid/sandbox"]\napi_key = "{key}"\npartner_id = "{PARTNER}"\n'


@pytest.fixture(autouse=True)
def no_key_in_test_output(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> Iterator[None]:
    """After each test: neither its stdout/stderr nor any log record holds a key."""
    ALL_SECRETS.update(ALL_KEYS)
    yield
    captured = capsys.readouterr()
    text = captured.out + captured.err + caplog.text
    assert [] == [key for key in ALL_KEYS if key in text]


@pytest.fixture
def daemon(start_daemon: Callable[..., Daemon]) -> Iterator[Daemon]:
    daemon = start_daemon(CONFIG, files={"keys.toml": keys_toml(KEY)})
    yield daemon
    daemon.assert_no_secret_in_logs(ALL_KEYS)


@pytest.fixture
def fake(fake_smileid: Callable[..., FakeSmileId]) -> FakeSmileId:
    return fake_smileid(KEY, PARTNER)


@pytest.fixture
def integration(daemon: Daemon) -> Iterator[Installation]:
    with install(socket=daemon.socket_path) as installation:
        yield installation


@pytest.fixture(autouse=True)
def no_polling_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    """WebApi.poll_job_status sleeps 2 s before each poll; the fake answers at once."""
    module = importlib.import_module("smile_id_core.WebApi")  # the package re-binds the name
    monkeypatch.setattr(module, "time", SimpleNamespace(sleep=lambda _s: None))


def rotate(daemon: Daemon, fake: FakeSmileId) -> None:
    """Smile ID disables the old key at once; the backend holds the new one."""
    fake.rotate(ROTATED_KEY)
    (daemon.config_path.parent / "keys.toml").write_text(keys_toml(ROTATED_KEY))


# -- the flows, as a service would write them, with only the placeholder key ---------------

PARTNER_PARAMS = {"user_id": "user-1", "job_id": "job-1"}
OPTIONS = {
    "return_job_status": True,
    "return_history": False,
    "return_images": False,
    "use_enrolled_image": False,
}
SELFIE = base64.b64encode(b"\xff\xd8\xff not really a jpeg").decode()


def id_api(url: str) -> Callable[[], Any]:
    api = IdApi(PARTNER, PLACEHOLDER, url)
    id_info = {"country": "NG", "id_type": "BVN", "id_number": "00000000000", "entered": True}
    return lambda: api.submit_job({**PARTNER_PARAMS, "job_type": 5}, id_info)


def business_verification(url: str) -> Callable[[], Any]:
    api = BusinessVerification(PARTNER, PLACEHOLDER, url)
    id_info = {"country": "NG", "id_type": "BUSINESS_REGISTRATION", "id_number": "0000000"}
    return lambda: api.submit_job({**PARTNER_PARAMS, "job_type": 7}, id_info)


def web_api_submit_job(url: str) -> Callable[[], Any]:
    api = WebApi(PARTNER, CALLBACK, PLACEHOLDER, url)  # signs here, reuses it for the job
    images = [{"image_type_id": 2, "image": SELFIE}]
    id_info = {"country": "NG", "id_type": "BVN", "id_number": "00000000000", "entered": True}
    return lambda: api.submit_job({**PARTNER_PARAMS, "job_type": 1}, images, id_info, OPTIONS)


def job_status(url: str) -> Callable[[], Any]:
    utilities = Utilities(PARTNER, PLACEHOLDER, url)
    return lambda: utilities.get_job_status({**PARTNER_PARAMS, "job_type": 1}, OPTIONS)


def web_token(url: str) -> Callable[[], Any]:
    api = WebApi(PARTNER, CALLBACK, PLACEHOLDER, url)
    return lambda: api.get_web_token("user-1", "job-1", "biometric_kyc")


FLOWS = {
    "IdApi.submit_job": (id_api, {"id_verification": 1}),
    "BusinessVerification": (business_verification, {"business_verification": 1}),
    "WebApi.submit_job": (web_api_submit_job, {"upload": 1, "zip": 1, "job_status": 1}),
    "Utilities.get_job_status": (job_status, {"job_status": 1}),
    "WebApi.get_web_token": (web_token, {"token": 1}),
}
flows = pytest.mark.parametrize("flow", FLOWS.values(), ids=FLOWS.keys())


def succeeded(result: Any) -> bool:
    return isinstance(result, dict) and bool(
        result.get("ResultCode") == "1012" or result.get("job_success") or result.get("token")
    )


@flows
def test_each_flow_succeeds_through_sidkeyd_with_the_placeholder_key(
    integration: Installation, fake: FakeSmileId, flow: Any
) -> None:
    """Every signed call of the flow is accepted by the strict fake; none is refused."""
    make, expected_calls = flow
    assert succeeded(make(fake.url)())
    assert (expected_calls, 0) == (dict(fake.calls), fake.refused)


@flows
def test_without_the_integration_the_same_flow_is_refused(
    daemon: Daemon, fake: FakeSmileId, flow: Any
) -> None:
    """The fake is strict: the SDK signing with the placeholder itself gets 401."""
    make, _ = flow
    try:
        result = make(fake.url)()
    except ServerError:
        result = None
    assert not succeeded(result)
    assert 1 == fake.refused


@flows
def test_a_key_rotated_mid_run_costs_one_refused_call(
    daemon: Daemon, integration: Installation, fake: FakeSmileId, flow: Any
) -> None:
    """The SDK object is made, the key rotates, the flow runs: one 401, then all accepted."""
    make, _ = flow
    run = make(fake.url)
    rotate(daemon, fake)
    assert succeeded(run())
    assert 1 == fake.refused
    daemon.wait_for_event("key.rotated", environment="sandbox", trigger="report")


def test_two_rotations_cost_one_refused_call_each(
    daemon: Daemon, integration: Installation, fake: FakeSmileId
) -> None:
    """A long-lived WebApi across two rotations: each costs its flow exactly one 401."""
    api = WebApi(PARTNER, CALLBACK, PLACEHOLDER, fake.url)
    images = [{"image_type_id": 2, "image": SELFIE}]
    id_info = {"country": "NG", "id_type": "BVN", "id_number": "00000000000", "entered": True}
    refused = []
    for key in (ROTATED_KEY, KEY):
        fake.rotate(key)
        (daemon.config_path.parent / "keys.toml").write_text(keys_toml(key))
        result = api.submit_job({**PARTNER_PARAMS, "job_type": 1}, images, id_info, OPTIONS)
        assert succeeded(result)
        refused.append(fake.refused)
    assert [1, 2] == refused


def test_the_job_status_answer_is_checked_through_verify(
    daemon: Daemon, integration: Installation, fake: FakeSmileId
) -> None:
    """The SDK's check of Smile ID's signed job-status answer is a /v1/verify at the daemon."""
    assert succeeded(job_status(fake.url)())
    assert 1 == len(daemon.events("signature.verified", environment="sandbox"))


def test_a_forged_job_status_answer_is_rejected(
    daemon: Daemon, integration: Installation, fake_smileid: Callable[..., FakeSmileId]
) -> None:
    """A job-status answer not signed with the daemon's key fails the SDK's own check."""
    impostor = fake_smileid(KEY, PARTNER, response_key="an-impostor-key")
    with pytest.raises(ServerError) as raised:
        job_status(impostor.url)()
    assert "Unable to confirm validity" in raised.value.message


def test_uninstall_restores_the_sdk(daemon: Daemon, fake: FakeSmileId) -> None:
    """After uninstall the SDK signs with its own class again (and is refused by the fake)."""
    original = smile_id_core.Signature
    install(socket=daemon.socket_path).uninstall()
    with pytest.raises(ServerError):
        id_api(fake.url)()
    assert (original, 1) == (smile_id_core.Signature, fake.refused)


def test_a_partner_id_the_daemon_does_not_sign_for_is_a_clear_error(
    integration: Installation, fake: FakeSmileId
) -> None:
    """IdApi with another partner_id fails before any request, naming both partner ids."""
    api = IdApi("999", PLACEHOLDER, fake.url)
    id_info = {"country": "NG", "id_type": "BVN", "id_number": "00000000000", "entered": True}
    with pytest.raises(PartnerMismatchError, match=r"'999' does not match .* partner_id '085'"):
        api.submit_job({**PARTNER_PARAMS, "job_type": 5}, id_info)
    assert 0 == sum(fake.calls.values())


def test_an_explicit_environment_needs_no_placeholder(daemon: Daemon, fake: FakeSmileId) -> None:
    """``install(environment=...)``: SDK objects built with any api_key string sign there."""
    with install(environment="sandbox", socket=daemon.socket_path):
        api = IdApi(PARTNER, "any-old-string", fake.url)
        id_info = {"country": "NG", "id_type": "BVN", "id_number": "00000000000", "entered": True}
        assert succeeded(api.submit_job({**PARTNER_PARAMS, "job_type": 5}, id_info))
    assert 0 == fake.refused
