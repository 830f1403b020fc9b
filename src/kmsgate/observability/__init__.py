"""Logging formats and metrics."""
