"""Crash dumps: the reference polled dump path (polled.py) and the dump formats."""
