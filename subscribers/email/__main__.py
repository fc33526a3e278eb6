"""`python -m subscribers.email`: the email service (same as `bus run email`)."""

from bus.consume.service import main

main("email")
