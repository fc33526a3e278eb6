"""`python -m subscribers.search`: the search service (same as `bus run search`)."""

from bus.consume.service import main

main("search")
