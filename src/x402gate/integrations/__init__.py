"""Framework integrations: thin translation layers over :class:`~x402gate.gate.PaymentGate`."""
