"""Tests of payment schemes on their own (no gate, no chain unless a test says so)."""
