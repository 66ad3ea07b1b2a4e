"""The one error type for bad user input.

Every check of a user-facing value raises ``ConfigError`` naming the field and what is allowed,
so command-line entry points can print one line and exit with status 2 before any work starts.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Iterable

# The largest seed: every random generator the project seeds (torch, numpy, random) takes it.
MAX_SEED = 2**32 - 1


class ConfigError(ValueError):
    """A user-supplied value is invalid. ``str(err)`` is a one-line message."""

    def __init__(self, field: str, value, allowed: str | Iterable):
        if not isinstance(allowed, str):
            allowed = ", ".join(str(a) for a in allowed)
        self.field = field
        self.value = value
        self.allowed = allowed
        super().__init__(f"invalid {field}: {value!r} (allowed: {allowed})")

    def __reduce__(self):
        # Rebuilt from its fields, so it survives pickling: a check that fails on a Ray worker
        # (missing dataset files, say) reaches the driver as this one-line error.
        return ConfigError, (self.field, self.value, self.allowed)


def first_line(err: BaseException) -> str:
    """An error's first line, at most 300 characters (its type when it has no text)."""
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:300]


def check_choice(field: str, value, choices: Iterable):
    choices = list(choices)
    if value not in choices:
        raise ConfigError(field, value, choices)
    return value


def check_flag(field: str, value) -> bool:
    """True or False, not a number or a string that stands for one of them."""
    if not isinstance(value, bool):
        raise ConfigError(field, value, [True, False])
    return value


def check_fraction(field: str, value) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(field, value, "a number in [0, 1]") from None
    if not 0.0 <= number <= 1.0:
        raise ConfigError(field, value, "a number in [0, 1]")
    return number


def check_number(field: str, value, *, integer: bool = False, minimum: float = 0,
                 maximum: float | None = None):
    """``value`` must be a finite number (an int when ``integer``; never a bool) in
    [minimum, maximum]."""
    kinds = (int,) if integer else (int, float)
    if (isinstance(value, bool) or not isinstance(value, kinds)
            or (isinstance(value, float) and not math.isfinite(value))
            or value < minimum or (maximum is not None and value > maximum)):
        kind = "an integer" if integer else "a number"
        allowed = f"{kind} >= {minimum}" + (f" and <= {maximum}" if maximum is not None else "")
        raise ConfigError(field, value, allowed)
    return value


def check_folder(field: str, path) -> Path:
    """``path`` is a folder this user can write in, or one that can be made: a temporary
    folder is made and removed in its nearest existing parent, so nothing is left behind."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise ConfigError(field, str(path), f"a folder ({path} is a file)")
    parent = next(p for p in (path, *path.parents) if p.exists())
    if not parent.is_dir():
        raise ConfigError(field, str(path), f"a folder ({parent} is a file)")
    try:
        os.rmdir(tempfile.mkdtemp(dir=parent, prefix=".write-check-"))
    except OSError as err:
        raise ConfigError(field, str(path), f"a folder this user can write ({parent}: "
                          f"{err.strerror})") from None
    return path


def check_file(field: str, path) -> Path:
    """``path`` can be written as a file: not a folder, in a folder that ``check_folder``
    accepts."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise ConfigError(field, str(path), "a file (this is a folder)")
    try:
        check_folder(field, path.parent)
    except ConfigError as err:
        raise ConfigError(field, str(path), f"a file in {err.allowed}") from None
    return path
