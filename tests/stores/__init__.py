"""Tests of x402gate.stores: every backend against the same rules, for real."""
