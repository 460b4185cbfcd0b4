"""Observability: what the data path reports about each exchange, and where it goes."""
