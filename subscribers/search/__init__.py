"""The search service: a searchable index of orders, started from history (`backfill`)."""
