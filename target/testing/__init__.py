"""Helpers that tools and tests use to run real targets (ours and tgtd) on 127.0.0.1."""
