"""`python -m subscribers.invoicing`: the invoicing service (same as `bus run invoicing`)."""

from bus.service import main

main("invoicing")
