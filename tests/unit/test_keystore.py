"""The key store: snapshots, swaps, previous keys, and reprs that never show a key."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime

import pytest

from sidkeyd.keystore import ApiKey, KeySnapshot, KeyStore, fingerprint

T0 = datetime(2026, 11, 25, tzinfo=UTC)
SECRET = "top-secret-key-material"


def snapshot(version: str, key: str = SECRET) -> KeySnapshot:
    return KeySnapshot.create(
        environment="sandbox", partner_id="085", version=version, api_key=ApiKey(key), loaded_at=T0
    )


def test_reprs_show_fingerprint_not_key() -> None:
    """Neither ApiKey nor KeySnapshot put the key in repr or str."""
    snap = snapshot("v1")
    for text in (repr(snap.api_key), str(snap.api_key), repr(snap)):
        assert SECRET not in text
    assert fingerprint(SECRET) in repr(snap)


def test_api_key_cannot_be_pickled() -> None:
    """Pickling would write the key out of memory; it is refused."""
    with pytest.raises(TypeError):
        pickle.dumps(ApiKey(SECRET))


def test_fingerprint_is_stable_and_short() -> None:
    """12 hex characters, the same for the same key, different for another."""
    assert 12 == len(fingerprint(SECRET))
    assert fingerprint(SECRET) == fingerprint(SECRET)
    assert fingerprint(SECRET) != fingerprint(SECRET + "x")


def test_put_keeps_the_replaced_key_as_previous() -> None:
    """A new version swaps in; the old one becomes previous with its retirement time."""
    store = KeyStore()
    store.put(snapshot("v1"), T0)
    later = datetime(2026, 11, 26, tzinfo=UTC)
    store.put(snapshot("v2", "other"), later)
    previous = store.previous("sandbox")
    assert previous is not None
    assert ("v2", "v1", later) == (
        store.get("sandbox").version,  # type: ignore[union-attr]
        previous.snapshot.version,
        previous.retired_at,
    )


def test_drop_forgets_current_and_previous() -> None:
    """A revoked environment holds no key at all."""
    store = KeyStore()
    store.put(snapshot("v1"), T0)
    store.put(snapshot("v2", "other"), T0)
    store.drop("sandbox")
    assert (None, None, []) == (
        store.get("sandbox"),
        store.previous("sandbox"),
        list(store.secrets()),
    )


def test_secrets_lists_held_keys_for_the_redactor() -> None:
    """Current and previous keys are both redacted from logs."""
    store = KeyStore()
    store.put(snapshot("v1"), T0)
    store.put(snapshot("v2", "other"), T0)
    assert {"other", SECRET} == set(store.secrets())


def test_json_fields_are_escaped() -> None:
    """Pre-encoded response fields survive quotes in versions."""
    snap = KeySnapshot.create(
        environment="sandbox", partner_id='0"85', version='v"1', api_key=ApiKey("k"), loaded_at=T0
    )
    assert b'"partner_id": "0\\"85"' in snap.json_fields


def test_content_versions_are_slow_hashes_stable_across_hosts() -> None:
    """A content version is scrypt over the key: the same everywhere, and no fast SHA-256."""
    import hashlib

    from sidkeyd.keystore import content_version

    first = content_version("purpose", "a-key", "085")
    material = b"purpose\x00a-key\x00085"
    assert first == content_version("purpose", "a-key", "085")
    assert first.startswith("scrypt:")
    assert hashlib.sha256(material).hexdigest()[:16] not in first
    assert first != content_version("purpose", "another-key", "085")
    assert first != content_version("other-purpose", "a-key", "085")
