"""The refunds service: the refund flow, a saga (one instance per refund_id)."""
