"""Attacks on kmsgate's promises, against real processes on loopback (bounded in count and time)."""
