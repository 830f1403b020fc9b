"""Persistence: SQLAlchemy Core schema, migrations and repositories over SQLite or PostgreSQL."""

import sys

# Alembic's template engine, Mako, imports Pygments (about 5 MiB of lexers) at import time
# when it is installed, only to colour Mako's own HTML tracebacks, which kmsgate never shows.
# Blocking that optional plugin keeps the lexers out of every process that migrates (Mako
# falls back to plain text); a plugin already imported is left as it is. None in sys.modules
# is Python's documented way to make an import fail, which typeshed does not model.
sys.modules.setdefault("mako.ext.pygmentplugin", None)  # type: ignore[arg-type]
