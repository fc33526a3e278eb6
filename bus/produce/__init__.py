"""The producer side's direct path: `Publisher` and the checks it shares with the outbox."""
