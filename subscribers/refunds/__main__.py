"""`python -m subscribers.refunds`: the refunds service (same as `bus run refunds`)."""

from bus.consume.service import main

main("refunds")
