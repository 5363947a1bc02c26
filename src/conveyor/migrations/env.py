"""Alembic environment: the URL comes from Conveyor's settings, never from alembic.ini.

Conveyor's revisions live in their own version table, so the application's Alembic history can
share the database, and in CONVEYOR_DATABASE_SCHEMA when that is set.
"""

from __future__ import annotations

from alembic import context
from alembic.runtime.environment import NameFilterParentNames, NameFilterType
from sqlalchemy import create_engine, pool, text

from conveyor.core import operations_models as _operations_models  # noqa: F401
from conveyor.core.models import Base
from conveyor.core.schedules import models as _schedule_models  # noqa: F401  (registers tables)
from conveyor.core.version_table import VERSION_TABLE, adopt_legacy_version
from conveyor.workloads.email import models as _email_models  # noqa: F401  (registers tables)
from conveyor.workloads.images import models as _images_models  # noqa: F401
from conveyor.workloads.payments import models as _payments_models  # noqa: F401
from conveyor.workloads.reports import models as _reports_models  # noqa: F401
from conveyor.workloads.scraping import models as _scraping_models  # noqa: F401

config = context.config
url = config.get_main_option("sqlalchemy.url")
schema: str | None = config.attributes.get("database_schema")


def include_name(name: str | None, type_: NameFilterType, _parents: NameFilterParentNames) -> bool:
    # Autogenerate compares Conveyor's tables only: the application's are not ours to drop.
    return type_ != "table" or (name or "").startswith("conveyor_")


def run_offline() -> None:
    context.configure(
        url=url,
        target_metadata=Base.metadata,
        literal_binds=True,
        version_table=VERSION_TABLE,
        version_table_schema=schema,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    assert url is not None
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        if schema:
            quoted = connection.dialect.identifier_preparer.quote_schema(schema)
            connection.execute(text(f"CREATE SCHEMA IF NOT EXISTS {quoted}"))
            # The revisions name no schema: unqualified names then mean ours.
            connection.execute(text(f"SET search_path TO {quoted}"))
            connection.commit()
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            version_table=VERSION_TABLE,
            version_table_schema=schema,
            # One schema is compared, the one search_path made the default.
            include_schemas=False,
            include_name=include_name,
            # SQLite cannot ALTER most things; batch mode rebuilds tables instead.
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            known = {script.revision for script in context.script.walk_revisions()}
            adopt_legacy_version(connection, schema, known)
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
