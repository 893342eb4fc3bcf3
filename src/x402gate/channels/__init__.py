"""Operating payment channels (``batch-settlement``): claiming what they earned and settling it
to the receiver, by hand (``x402gate channels claim|settle``) or in the background."""

from __future__ import annotations

from .claimer import BackgroundClaimer
from .claims import ClaimEngine, ClaimReport, ClaimSettings, SettleReport

__all__ = ["BackgroundClaimer", "ClaimEngine", "ClaimReport", "ClaimSettings", "SettleReport"]
