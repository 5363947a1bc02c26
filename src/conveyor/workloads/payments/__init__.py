"""Payments: idempotent charges and refunds through a gateway, with a balance ledger."""
