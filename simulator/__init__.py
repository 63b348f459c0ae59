"""Deterministic generative simulator of a clinical-trial cohort (see docs/simulator.md)."""
from __future__ import annotations

from .config import FAULT_KINDS, TOPICS, DoseSchedule, SimulationConfig
from .model import SimRecord, iter_records

__all__ = ["FAULT_KINDS", "TOPICS", "DoseSchedule", "SimRecord", "SimulationConfig", "iter_records"]
