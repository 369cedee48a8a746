"""The transaction hub: merchant sessions, the transaction service, bank links."""
