"""The email service: order confirmation and shipping mails over SMTP."""
