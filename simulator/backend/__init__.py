"""The business backend ("server1") simulator: verifies payflow's signed paid events (DESIGN §6.3), keeps an
idempotent ledger of orders, injects the faults of a `BackendFaults` plan, and has `/sim/v1` control endpoints."""

from __future__ import annotations

from simulator.backend.app import create_app
from simulator.backend.appkeys import CLOCK, FAULTS, LEDGER, SECRET
from simulator.backend.server import add_arguments, main, serve

__all__ = ["CLOCK", "FAULTS", "LEDGER", "SECRET", "add_arguments", "create_app", "main", "serve"]
