"""Helpers for tests and the offline demo: tiny seeded models built from the bundled configs."""
