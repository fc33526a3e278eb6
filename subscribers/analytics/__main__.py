"""`python -m subscribers.analytics`: the analytics service (same as `bus run analytics`)."""

from bus.consume.service import main

main("analytics")
