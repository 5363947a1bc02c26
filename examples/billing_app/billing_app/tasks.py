"""The app's own task module: CONVEYOR_TASK_MODULES=billing_app.tasks loads it into every
worker, and CONVEYOR_QUEUES="billing=billing_app.*" declares the queue its tasks run on."""

from __future__ import annotations

from celery import shared_task
from sqlalchemy.orm import Session

from billing_app.db import engine
from billing_app.models import User
from conveyor import ConveyorTask, PermanentError


@shared_task(bind=True, base=ConveyorTask, name="billing_app.send_invoice")
def send_invoice(self: ConveyorTask, user_id: int, amount_cents: int) -> dict[str, object]:
    """Bill a user: fails for good (a dead letter to replay) while they have no billing email."""
    with Session(engine()) as session:
        user = session.get(User, user_id)
        if user is None:
            raise PermanentError(f"user {user_id} does not exist")
        if not user.billing_email:
            # Retrying cannot add an address: replay once the user has one.
            raise PermanentError(f"user {user_id} has no billing email; set one, then replay")
        self.report_progress(1, 1, f"invoice for {user.billing_email}")
        return {"sent_to": user.billing_email, "amount_cents": amount_cents}
