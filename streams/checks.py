"""Checks of what a command is given — numbers, months, files and directories — made before any
work: a wrong value is one clear error (exit 2) instead of a traceback, or results lost at the end
of a long run."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Iterable

from .core.errors import ConfigError
from .core.timeutil import check_period


def input_file(path: Path, flag: str, *, allow_dir: bool = False) -> Path:
    """A file to read (``allow_dir``: or a directory of them)."""
    if not path.exists():
        raise ConfigError(f"{flag} {path}: no such file")
    if path.is_dir() and not allow_dir:
        raise ConfigError(f"{flag} {path}: is a directory, expected a file")
    if not os.access(path, os.R_OK):
        raise ConfigError(f"{flag} {path}: not readable (permission denied)")
    return path


def output_file(path: Path, flag: str, suffixes: Iterable[str] = ()) -> Path:
    """A file to (over)write: not a directory, in a directory that exists and is writable, with one
    of ``suffixes`` when given."""
    allowed = tuple(suffixes)
    if allowed and path.suffix.lower() not in allowed:
        raise ConfigError(f"{flag} {path}: expected a file name ending in {' or '.join(allowed)}")
    if path.is_dir():
        raise ConfigError(f"{flag} {path}: is a directory, expected a file name")
    parent = path.parent
    if not parent.is_dir():
        raise ConfigError(f"{flag} {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ConfigError(f"{flag} {path}: not writable (permission denied)")
    return path


def output_dir(path: Path, flag: str) -> Path:
    """A directory to write into, created later if missing: not an existing file, and its nearest
    existing ancestor is a writable directory."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{flag} {path}: is a file, expected a directory")
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"{flag} {path}: {probe} is a file, so the directory cannot be created")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {path}: {probe} is not writable (permission denied)")
    return path


# ------------------------------------------------------------------------- argparse types


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a count (0 or more), got {text!r}")
    return int(text)


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def period(text: str) -> str:
    try:
        return check_period(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
