"""Loading the operator's configuration (plans, rate deck) and building the engine from settings."""

from __future__ import annotations

from .core.fraud import FraudEngine
from .core.plans import PlanBook, load_plans
from .core.rates import RateDeck, load_rate_deck
from .core.usage import UsageEngine
from .checks import input_file
from .settings import Settings


def load_config(settings: Settings) -> tuple[PlanBook, RateDeck]:
    rates = load_rate_deck(input_file(settings.rates_path, "--rates"))
    return load_plans(input_file(settings.plans_path, "--plans"), rates), rates


def build_engine(settings: Settings, plans: PlanBook, rates: RateDeck) -> UsageEngine:
    return UsageEngine(
        plans,
        rates,
        hash_secret=settings.hash_secret.get_secret_value().encode(),
        max_call_duration_s=settings.max_call_duration_s,
        retention_months=settings.retention_months,
    )


def build_fraud_engine(settings: Settings, plans: PlanBook, rates: RateDeck) -> FraudEngine | None:
    """The fraud engine, or None when no plan configures a fraud rule."""
    engine = FraudEngine(
        plans,
        rates,
        hash_secret=settings.hash_secret.get_secret_value().encode(),
        max_call_duration_s=settings.max_call_duration_s,
    )
    return engine if engine.enabled else None
