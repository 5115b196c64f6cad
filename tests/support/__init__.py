"""Shared helpers for the test tiers (paths, the MicroPython runner)."""
