"""Images: upload, validate, and variants made in parallel as a Celery canvas."""
