"""Exceptions of cdrwatch.

    CdrwatchError
    ├── ConfigError             a file or flag the operator gave is wrong (exit 2)
    │   ├── PlansError          plans.toml
    │   └── RateDeckError       rates.csv
    └── InvalidRecord           one message on a topic is bad: it goes to the DLQ with this reason
"""

from __future__ import annotations


class CdrwatchError(Exception):
    pass


class ConfigError(CdrwatchError):
    pass


class PlansError(ConfigError):
    pass


class RateDeckError(ConfigError):
    pass


class InvalidRecord(CdrwatchError):
    """The reason, in words a person can act on, why one message was rejected."""
