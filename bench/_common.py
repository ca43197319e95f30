"""Shared helpers for the benchmarks: where the real data lives, and writing results files."""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
SHARED_DATA = Path(os.environ.get("TUNER_SHARED_DATA", ROOT.parent / "shared" / "data"))


def require_shared(*parts: str) -> Path:
    """A path under ``../shared/data``; exits with a clear reason when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        sys.exit(f"skipped: {path} is absent (set TUNER_SHARED_DATA to the folder holding nips_abstracts/)")
    return path


def machine(precision: str | None = "auto") -> dict[str, Any]:
    """The machine a result came from: CPU model, torch's capability, the bf16 flags that decide
    ``precision = "auto"`` and what it resolved to, torch threads, the GPU; see ``tuner.hardware``."""
    from tuner import hardware

    return {"python": platform.python_version(), **hardware.describe(precision)}


def write_results(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    print(f"wrote {path}")
    return path


def replace_section(document: str, key: str, section: str) -> str:
    """``document`` with the text between ``<!-- key:start -->`` and ``<!-- key:end -->`` replaced (appended
    when absent)."""
    start, end = f"<!-- {key}:start -->", f"<!-- {key}:end -->"
    block = f"{start}\n{section.rstrip()}\n{end}"
    if start in document and end in document:
        head, rest = document.split(start, 1)
        return head + block + rest.split(end, 1)[1]
    return (document.rstrip() + "\n\n" if document.strip() else "") + block + "\n"


def ensure_pg_database(pg_url: str) -> Any:
    """The PostgreSQL URL's database, created if absent; returns the parsed URL."""
    import sqlalchemy

    url = sqlalchemy.engine.make_url(pg_url)
    admin = sqlalchemy.create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT",
                                     poolclass=sqlalchemy.pool.NullPool)
    with admin.connect() as connection:
        if not connection.execute(sqlalchemy.text("SELECT 1 FROM pg_database WHERE datname = :name"),
                                  {"name": url.database}).scalar():
            connection.execute(sqlalchemy.text(f'CREATE DATABASE "{url.database}"'))
    admin.dispose()
    return url
