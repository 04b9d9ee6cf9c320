"""The fair-use rules: ``engine`` (events in, alerts and re-bill lines out), ``rules`` (one function
per rule), ``rebill`` (the month billed again on a breach)."""

from .engine import FairUseEngine, Outcome
from .rules import Breach

__all__ = ["Breach", "FairUseEngine", "Outcome"]
