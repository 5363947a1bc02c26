"""Points in a charge where a receiver may look in (nothing listens in production).

Tests connect receivers to stop a worker at an exact point of the charge, e.g. right after
the gateway answered and before the outcome is saved:

    charge_returned.connect(lambda sender, payment_id, customer_id, **_: ...)
"""

from __future__ import annotations

from celery.utils.dispatch import Signal

# Before the charge request is sent to the gateway.
charge_requested = Signal(name="payments.charge_requested")
# The gateway answered; nothing is saved yet.
charge_returned = Signal(name="payments.charge_returned")
# Inside the transaction that saves the outcome, before it commits.
charge_settling = Signal(name="payments.charge_settling")
