"""The app's own Alembic environment: its tables only, in the default alembic_version."""

from __future__ import annotations

from alembic import context
from billing_app.db import Base, database_url
from billing_app.models import User  # noqa: F401  (registers the table)
from sqlalchemy import create_engine

with create_engine(database_url()).connect() as connection:
    context.configure(connection=connection, target_metadata=Base.metadata)
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
