"""Fraud screening before a charge reaches a bank."""

from gateway.fraud.engine import FraudEngine, Screening, Verdict

__all__ = ["FraudEngine", "Screening", "Verdict"]
