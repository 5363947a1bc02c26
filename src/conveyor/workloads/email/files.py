"""Uploaded files (email attachments): stored before any email names them.

Apart from the email service, so the upload route needs neither the templates nor the
address checks that the email extra brings.
"""

from __future__ import annotations

import uuid

from sqlalchemy.orm import Session

from conveyor.core.models import utcnow
from conveyor.core.storage import Storage
from conveyor.workloads.email.models import StoredFile


def store_file(
    session: Session,
    storage: Storage,
    *,
    owner: str,
    filename: str,
    content_type: str,
    data: bytes,
) -> StoredFile:
    file_id = uuid.uuid4().hex
    key = f"files/{file_id}"
    storage.put(key, data, content_type)
    stored = StoredFile(
        id=file_id,
        owner=owner,
        filename=filename,
        content_type=content_type,
        size=len(data),
        storage_key=key,
        created_at=utcnow(),
    )
    session.add(stored)
    session.flush()
    return stored
