"""`python -m subscribers.invoicing`: the invoicing service (same as `bus run invoicing`)."""

from bus.consume.service import main

main("invoicing")
