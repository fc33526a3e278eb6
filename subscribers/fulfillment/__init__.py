"""The fulfillment service: asks the warehouse to ship each order."""
