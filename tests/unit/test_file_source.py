"""The file source: TOML or JSON key files, content-hash versions, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sidkeyd.config import EnvironmentConfig, FileSourceConfig
from sidkeyd.errors import AccessLostError, InvalidSecretError
from sidkeyd.sources import SecretValue, Unchanged
from sidkeyd.sources.file import FileSource

ENV = EnvironmentConfig(name="sandbox", source="local", secret="smileid/sandbox")
KEY = "file-key-123"


def source(path: Path) -> FileSource:
    return FileSource(FileSourceConfig(name="local", path=path))


def write_toml(path: Path, key: str = KEY) -> Path:
    path.write_text(f'["smileid/sandbox"]\napi_key = "{key}"\npartner_id = "085"\n')
    return path


def test_reads_a_toml_entry(tmp_path: Path) -> None:
    """The table named by the secret reference gives key, partner id and a hash version."""
    result = source(write_toml(tmp_path / "k.toml")).fetch(ENV, None)
    assert isinstance(result, SecretValue)
    assert (KEY, "085") == (result.api_key.reveal(), result.partner_id)
    assert result.version.startswith("scrypt:")


def test_reads_a_json_file(tmp_path: Path) -> None:
    """A .json file works the same way."""
    path = tmp_path / "k.json"
    path.write_text(json.dumps({"smileid/sandbox": {"api_key": KEY}}))
    result = source(path).fetch(ENV, None)
    assert isinstance(result, SecretValue)
    assert KEY == result.api_key.reveal()


def test_same_content_is_unchanged_and_new_content_is_a_new_version(tmp_path: Path) -> None:
    """The version is a content hash: unchanged while the entry is, new when it changes."""
    path = write_toml(tmp_path / "k.toml")
    first = source(path).fetch(ENV, None)
    assert Unchanged(first.version) == source(path).fetch(ENV, first.version)
    write_toml(path, "another-key")
    second = source(path).fetch(ENV, first.version)
    assert isinstance(second, SecretValue)
    assert first.version != second.version


def test_missing_file_and_missing_entry_mean_access_lost(tmp_path: Path) -> None:
    """No file, or no table for the reference: the secret is not found."""
    with pytest.raises(AccessLostError, match="does not exist"):
        source(tmp_path / "nope.toml").fetch(ENV, None)
    path = tmp_path / "k.toml"
    path.write_text('["other"]\napi_key = "x"\n')
    with pytest.raises(AccessLostError, match="smileid/sandbox"):
        source(path).fetch(ENV, None)


def test_broken_file_error_does_not_quote_the_file(tmp_path: Path) -> None:
    """A parse error says which file is broken, never the line (it may hold a key)."""
    path = tmp_path / "k.toml"
    path.write_text(f'["smileid/sandbox"]\napi_key = "{KEY}\n')
    with pytest.raises(InvalidSecretError) as caught:
        source(path).fetch(ENV, None)
    assert KEY not in str(caught.value)
    assert None is caught.value.__cause__
