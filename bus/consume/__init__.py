"""The consume runtime: a router of handlers, the pure dispatch step that decides each delivery's
outcome, the I/O shell that performs it (`runtime`), and the service process around it (`service`).
"""
