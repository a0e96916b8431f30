"""Fuzz targets of tools/fuzz and their regression replay (issue 15)."""
