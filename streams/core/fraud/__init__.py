"""The fraud rules: ``engine`` (events in, alerts and account actions out, the state kept bounded),
``rules`` (one function per rule kind), ``alerts`` (what a rule emits and its wording),
``destinations`` (what the rules know of a called number)."""

from ..timeutil import DAY_MS
from .alerts import LEVELS, UNITS, FraudOutcome
from .engine import FraudEngine
from .rules import network_of

__all__ = ["DAY_MS", "FraudEngine", "FraudOutcome", "LEVELS", "UNITS", "network_of"]
