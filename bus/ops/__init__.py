"""Operator tools over the broker: the DLQ, `bus status`, queue-depth gauges, health probes."""
