"""Tests of x402gate.integrations: each adapter on a real chain, with real servers."""
