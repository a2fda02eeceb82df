"""Failover drills against the native lab (``ccdr drill run``)."""

from lab.drill.scenario import Fault, Scenario, load_scenario, parse_scenario

__all__ = ["Fault", "Scenario", "load_scenario", "parse_scenario"]
