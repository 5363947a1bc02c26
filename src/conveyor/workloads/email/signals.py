"""Signals of the email workload, like Laravel's MessageSent event.

    from conveyor.workloads.email.signals import email_sent

    @email_sent.connect
    def audit(sender, email_id, message_id, owner, to, batch_id, **kwargs): ...

`email_sent` fires in the worker right after the sent-record is committed. A receiver
that raises is logged and does not affect the send.
"""

from __future__ import annotations

from celery.utils.dispatch import Signal

email_sent = Signal(name="email_sent")
