"""Benchmarks side by side with raw aio-pika."""
