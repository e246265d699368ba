"""The embedded durable store: one SQLite file, group commit, flushes off the event loop.

``open_sqlite_store(path, limits)`` yields a ``SqliteStore`` (``store``: the store
and its transactions), which runs every operation as one transaction of the
``SqliteWriter`` (``writer``: the connection's thread, group commit, flushes)
on the tables of ``schema`` (creation, migrations, the lock file).
"""

from .schema import SCHEMA_VERSION as SCHEMA_VERSION
from .schema import StoreError as StoreError
from .schema import StoreUnusableError as StoreUnusableError
from .store import DEFAULT_FILENAME as DEFAULT_FILENAME
from .store import SqliteStore as SqliteStore
from .store import open_sqlite_store as open_sqlite_store
from .writer import SqliteStoreStatistics as SqliteStoreStatistics

__all__ = [
    "DEFAULT_FILENAME",
    "SCHEMA_VERSION",
    "SqliteStore",
    "SqliteStoreStatistics",
    "StoreError",
    "StoreUnusableError",
    "open_sqlite_store",
]
