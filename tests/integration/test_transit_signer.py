"""The Vault source's Transit signer against a real OpenBao dev server, below the daemon."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sidkeyd.config import EnvironmentConfig, VaultAuthConfig, VaultSourceConfig
from sidkeyd.config_loader import MAX_PRESIGN_BATCH
from sidkeyd.errors import AccessLostError, InvalidSecretError
from sidkeyd.keystore import ApiKey
from sidkeyd.signing import compute_signature, signed_message
from sidkeyd.sources import RemoteKey, Unchanged
from sidkeyd.sources.vault import VaultSource
from sidkeyd.sources.vault.byok import import_transit_key
from support.openbao_server import CountingProxy, OpenBao

pytestmark = pytest.mark.vault

FIRST_KEY = "integration-transit-key-one-0000-not-real"
SECOND_KEY = "integration-transit-key-two-1111-not-real"
STAMP = "2026-12-01T08:12:13.000Z"


@pytest.fixture
def mount(openbao: OpenBao) -> str:
    name = openbao.unique("transit")
    openbao.admin.sys.enable_secrets_engine("transit", path=name)
    return name


def environment(mount: str, key: str = "smileid") -> EnvironmentConfig:
    return EnvironmentConfig(
        name="sandbox",
        source="bao",
        secret="",
        partner_id="085",
        signer="transit",
        transit_mount=mount,
        transit_key=key,
    )


def source_config(url: str, folder: Path, token: str) -> VaultSourceConfig:
    token_file = folder / "token"
    token_file.write_text(token)
    auth = VaultAuthConfig(method="token", token_file=token_file)
    return VaultSourceConfig(name="bao", url=url, auth=auth)


@pytest.fixture
def root_source(openbao: OpenBao, tmp_path: Path) -> Iterator[VaultSource]:
    source = VaultSource(source_config(openbao.url, tmp_path, openbao.root_token))
    yield source
    source.close()


def imported(openbao: OpenBao, tmp_path: Path, env: EnvironmentConfig, key: str) -> int:
    config = source_config(openbao.url, tmp_path, openbao.root_token)
    return import_transit_key(config, env, ApiKey(key)).version


def remote(result: object) -> RemoteKey:
    assert isinstance(result, RemoteKey)
    return result


def test_the_cheap_check_names_latest_version_and_is_unchanged_while_it_holds(
    openbao: OpenBao, root_source: VaultSource, mount: str, tmp_path: Path
) -> None:
    """``latest_version`` is the key version; held, the check answers ``Unchanged``."""
    env = environment(mount)
    imported(openbao, tmp_path, env, FIRST_KEY)
    first = remote(root_source.fetch(env, None))
    unchanged = root_source.fetch(env, "1")

    assert ("1", Unchanged("1")) == (first.version, unchanged)


def test_a_signer_stays_on_its_version_after_import_version(
    openbao: OpenBao, root_source: VaultSource, mount: str, tmp_path: Path
) -> None:
    """The old version's signer keeps signing with the old key; the check sees version 2."""
    env = environment(mount)
    imported(openbao, tmp_path, env, FIRST_KEY)
    old = remote(root_source.fetch(env, None)).signer
    version = imported(openbao, tmp_path, env, SECOND_KEY)
    new = remote(root_source.fetch(env, "1")).signer
    message = signed_message(STAMP, "085")

    assert (2, "2") == (version, new.version)
    assert [compute_signature(FIRST_KEY, STAMP, "085")] == old.sign([message])
    assert [compute_signature(SECOND_KEY, STAMP, "085")] == new.sign([message])
    assert (True, False) == (
        new.verify(message, compute_signature(SECOND_KEY, STAMP, "085")),
        new.verify(message, compute_signature(FIRST_KEY, STAMP, "085")),
    )


def test_a_key_of_another_type_is_refused(
    openbao: OpenBao, root_source: VaultSource, mount: str
) -> None:
    """An encryption key cannot compute Smile ID's HMAC: ``transit_key_type``."""
    openbao.admin.secrets.transit.create_key(name="aes", mount_point=mount)
    with pytest.raises(InvalidSecretError) as refused:
        root_source.fetch(environment(mount, "aes"), None)

    assert "transit_key_type" == refused.value.code


def test_a_missing_key_is_access_lost(root_source: VaultSource, mount: str) -> None:
    """No such key: the host is cut off (``secret_not_found``), as for a missing secret."""
    with pytest.raises(AccessLostError) as refused:
        root_source.fetch(environment(mount, "nothing-here"), None)

    assert "secret_not_found" == refused.value.code


def test_a_malformed_signature_is_invalid_without_a_call(
    openbao: OpenBao, mount: str, tmp_path: Path
) -> None:
    """Not 32 bytes of base64: refused locally, nothing reaches the server."""
    env = environment(mount)
    imported(openbao, tmp_path, env, FIRST_KEY)
    with CountingProxy(openbao.url) as proxy:
        source = VaultSource(source_config(proxy.url, tmp_path, openbao.root_token))
        try:
            signer = remote(source.fetch(env, None)).signer
            mark = proxy.mark()
            answers = [signer.verify(b"m", "not base64!"), signer.verify(b"m", "c2hvcnQ=")]
            calls = proxy.seen()[mark:]
        finally:
            source.close()

    assert ([False, False], []) == (answers, calls)


def test_the_largest_batch_the_config_allows_is_one_call(
    openbao: OpenBao, root_source: VaultSource, mount: str, tmp_path: Path
) -> None:
    """``presign_batch`` at its maximum: Transit takes it (no "high complexity" refusal)."""
    env = environment(mount)
    imported(openbao, tmp_path, env, FIRST_KEY)
    signer = remote(root_source.fetch(env, None)).signer
    stamps = [f"2026-12-01T08:{m:02d}:{s:02d}.000Z" for m in range(10) for s in range(60)]
    stamps = stamps[:MAX_PRESIGN_BATCH]
    signatures = signer.sign([signed_message(stamp, "085") for stamp in stamps])

    assert [compute_signature(FIRST_KEY, stamp, "085") for stamp in stamps] == signatures
