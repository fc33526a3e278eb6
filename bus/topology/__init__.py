"""The topology: one YAML file declares exchanges, events, subscribers and schedules."""

from bus.topology.model import Schedule, Subscriber, Topology, load, loads

__all__ = ["Schedule", "Subscriber", "Topology", "load", "loads"]
