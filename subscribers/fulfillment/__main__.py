"""`python -m subscribers.fulfillment`: the fulfillment service (same as `bus run fulfillment`)."""

from bus.consume.service import main

main("fulfillment")
