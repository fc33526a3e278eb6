"""The analytics service: counts every event per type and hour."""
