"""One TOML table being validated: typed getters that record problems instead of raising.

Each getter names the problem with the value's dotted key path; ``finish()`` records every key
that no getter asked for as unknown, so that a typo never falls back to a default silently.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar, cast

from sidkeyd.durations import parse_duration
from sidkeyd.errors import ConfigProblem
from sidkeyd.redaction import truncate

T = TypeVar("T")


MAX_NAME_IN_PATH = 128  # characters of one TOML key in a problem's key path


class TomlTable:
    """A view of one TOML table that records problems with their full key paths."""

    def __init__(
        self, data: Mapping[str, Any], path: str, problems: list[ConfigProblem], base_dir: Path
    ) -> None:
        self._data = data
        self._path = path
        self._problems = problems
        self._base_dir = base_dir
        self._seen: set[str] = set()

    def key(self, key: str) -> str:
        # Names cut short: a table's path is repeated in each of its problems, so one long
        # quoted name with thousands of unknown keys under it made gigabytes of key paths
        # (in the loader's memory, the log line, the reload's answer and its audit record).
        key = truncate(key, MAX_NAME_IN_PATH)
        if not key:
            return self._path or "(root)"
        return f"{self._path}.{key}" if self._path else key

    def problem(self, key: str, reason: str) -> None:
        self._problems.append(ConfigProblem(self.key(key), reason))

    def _get(self, key: str, kind: type[T] | tuple[type, ...], what: str) -> T | None:
        self._seen.add(key)
        if key not in self._data:
            return None
        value = self._data[key]
        # bool is an int in Python; a TOML boolean is never a valid number here.
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            self.problem(key, f"must be {what}, not {type(value).__name__} {value!r}")
            return None
        return cast("T", value)

    def table(self, key: str) -> TomlTable:
        self._seen.add(key)
        value = self._data.get(key, {})
        if not isinstance(value, dict):
            self.problem(key, "must be a table")
            value = {}
        return TomlTable(value, self.key(key), self._problems, self._base_dir)

    def tables(self, key: str) -> list[tuple[str, TomlTable]]:
        parent = self.table(key)
        parent._seen.update(parent._data)
        out = []
        for name, value in parent._data.items():
            if isinstance(value, dict):
                out.append(
                    (name, TomlTable(value, parent.key(name), self._problems, self._base_dir))
                )
            else:
                parent.problem(name, "must be a table")
        return out

    def string(self, key: str, default: str) -> str:
        value = self._get(key, str, "a string")
        if value is not None and not value.strip():
            self.problem(key, "must not be empty")
            return default
        return default if value is None else value

    def optional_str(self, key: str, *, allow_int: bool = False) -> str | None:
        if allow_int and type(self._data.get(key)) is int:
            self._seen.add(key)
            self.problem(key, 'must be a quoted string ("085" keeps its leading zero)')
            return None
        value = self._get(key, str, "a string")
        if value is not None and not value.strip():
            self.problem(key, "must not be empty")
            return None
        return value

    def required_str(self, key: str) -> str:
        if key not in self._data:
            self._seen.add(key)
            self.problem(key, "is required")
            return ""
        return self.optional_str(key) or ""

    @property
    def raw(self) -> Mapping[str, Any]:
        return self._data

    def int_list(self, key: str) -> tuple[int, ...]:
        value = self._get(key, list, "a list of integers")
        if value is None:
            return ()
        if not all(type(item) is int and 0 <= item <= MAX_ID for item in value):
            self.problem(key, f"must be a list of integers from 0 to {MAX_ID}")
            return ()
        return tuple(value)

    def str_list(self, key: str) -> tuple[str, ...]:
        value = self._get(key, list, "a list of strings")
        if value is None:
            return ()
        if not all(isinstance(item, str) and item for item in value):
            self.problem(key, "must be a list of non-empty strings")
            return ()
        return tuple(value)

    def names_or_ids(self, key: str) -> tuple[str | int, ...]:
        """Names (strings) and numeric ids (integers or digit strings, which become integers)."""
        value = self._get(key, list, "a list of names or numeric ids")
        if value is None:
            return ()
        items = [_name_or_id(item) for item in value]
        if not all(item is not None for item in items):
            self.problem(key, f"must list names or numeric ids from 0 to {MAX_ID}")
            return ()
        return tuple(cast("list[str | int]", items))

    def name_or_id(self, key: str) -> str | int | None:
        """One name or numeric id (an integer or a digit string, which becomes an integer)."""
        self._seen.add(key)
        if key not in self._data:
            return None
        value = _name_or_id(self._data[key])
        if value is None:
            self.problem(key, f"must be a name or a numeric id from 0 to {MAX_ID}")
        return value

    def integer(self, key: str, default: int, low: int, high: int) -> int:
        value = self._get(key, int, "an integer")
        if value is None:
            return default
        if not low <= value <= high:
            self.problem(key, f"must be between {low} and {high}, not {value}")
            return default
        return value

    def optional_int(self, key: str, low: int) -> int | None:
        value = self._get(key, int, "an integer")
        if value is not None and value < low:
            self.problem(key, f"must be at least {low}")
            return None
        return value

    def number(self, key: str, default: float, low: float, high: float) -> float:
        value = self._get(key, (int, float), "a number")
        if value is None:
            return default
        if not low <= float(value) <= high:
            self.problem(key, f"must be between {low} and {high}, not {value}")
            return default
        return float(value)

    def boolean(self, key: str, default: bool) -> bool:
        value = self._get(key, bool, "true or false")
        return default if value is None else value

    def choice(self, key: str, options: tuple[str, ...], default: Any) -> Any:
        value = self._get(key, str, "a string")
        if value is None:
            if default is None:
                self.problem(key, f"is required: one of {', '.join(options)}")
            return default
        if value not in options:
            self.problem(key, f"must be one of {', '.join(options)}, not {value!r}")
            return default
        return value

    def duration(
        self, key: str, default: timedelta, *, minimum: timedelta = timedelta(0)
    ) -> timedelta:
        value = self._get(key, str, 'a duration string such as "30s"')
        if value is None:
            return default
        try:
            parsed = parse_duration(value)
        except ValueError as exc:
            self.problem(key, str(exc))
            return default
        if parsed < minimum:
            self.problem(key, f"must be at least {minimum.total_seconds():g}s")
            return default
        return parsed

    def mode(self, key: str, default: int) -> int:
        value = self._get(key, str, 'an octal string such as "0660"')
        if value is None:
            return default
        if not re.fullmatch(r"0?[0-7]{3}", value):
            self.problem(key, f'must be an octal mode such as "0660", not {value!r}')
            return default
        mode = int(value, 8)
        if mode & 0o002:
            self.problem(key, "must not let every user on the host write to the socket")
            return default
        return mode

    def path(self, key: str, default: Path | None) -> Path | None:
        value = self._get(key, str, "a path string")
        if value is None:
            return default
        return Path(os.path.normpath(self._base_dir / Path(value).expanduser()))

    def finish(self) -> None:
        """Report keys nobody asked for: they are typos or options of another version."""
        for key in self._data:
            if key not in self._seen:
                close = difflib.get_close_matches(key, sorted(self._seen), n=1, cutoff=0.75)
                self.problem(
                    key, f"unknown key (did you mean {close[0]!r}?)" if close else "unknown key"
                )


MAX_ID = 4_294_967_294  # uid_t and gid_t are 32 bits; (uid_t)-1 means "no change"


def _name_or_id(value: object) -> str | int | None:
    """1001 and "1001" (ASCII digits) are ids, never looked up as names; "app" is a name.

    Unlike chown(1), which looks a digit string up as a name first: a client container's
    users have no entry here, and an id must not change meaning with /etc/passwd.
    """
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    if type(value) is int:
        return value if 0 <= value <= MAX_ID else None
    if isinstance(value, str) and value.strip():
        return value
    return None
