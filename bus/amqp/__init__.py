"""AMQP plumbing: the one place that connects to RabbitMQ, and the helpers every tool needs."""
