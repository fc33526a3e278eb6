"""`python -m subscribers.fulfillment`: the fulfillment service (same as `bus run fulfillment`)."""

from bus.service import main

main("fulfillment")
