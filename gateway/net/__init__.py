"""Asyncio adapters that move bytes between transports and the sans-I/O protocol core."""
