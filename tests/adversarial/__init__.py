"""Attacks on kmsgate's promises, run against real processes on loopback (bounded in count and time)."""
