"""`bus demo`: the whole flow on this machine. Not part of the library: it runs from a checkout
of the repository (it starts the services in subscribers/ and the orders API in api/)."""
