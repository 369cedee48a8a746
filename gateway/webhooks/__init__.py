"""Merchant notifications: the webhook payload, and the dispatcher that delivers them."""
