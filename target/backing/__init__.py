"""Backing stores: where a logical unit's blocks live (memory, file, block device)."""
