"""Placeholder: the webhook service (being written)."""
