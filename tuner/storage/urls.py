"""Storage URLs: where a study lives, how a URL is shown, and what its failures mean.

The URL comes from ``--storage``, else ``$TUNER_STORAGE``, else the study file, else the embedded
default ``sqlite:///tuner.db``. Passwords never appear in messages: every URL shown goes through
:func:`mask`, and every driver error through :func:`scrub`.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any, TypeVar

from tuner.errors import TunerError, first_line

log = logging.getLogger(__name__)

T = TypeVar("T")
DEFAULT_URL = "sqlite:///tuner.db"


ENV_VAR = "TUNER_STORAGE"
PROXY_SCHEME = "grpc"  # grpc://HOST:PORT: the storage proxy of `tuner storage serve` (tuner.storage.proxy)


class StorageError(TunerError):
    """A storage URL that is malformed, needs a missing driver, or cannot be reached."""


class NoDatabase(StorageError):
    """A SQLite file that does not exist, given to a command that uses a study but never creates one."""


def resolve_url(cli: str | None = None, study_file: str | None = None) -> str:
    """The storage URL by precedence: ``--storage``, ``$TUNER_STORAGE``, the study file, the default."""
    for value in (cli, os.environ.get(ENV_VAR), study_file):
        if value:
            return value
    return DEFAULT_URL


def is_proxy(url: str) -> bool:
    """Whether ``url`` names a storage proxy (``grpc://HOST:PORT``) rather than a database."""
    return url.partition("://")[0].lower() == PROXY_SCHEME


def proxy_address(url: str) -> tuple[str, int]:
    """The host and port of ``grpc://HOST:PORT``, or an error that shows the expected form."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname or port is None or parts.path not in ("", "/") or parts.query or parts.username:
        raise StorageError(f"bad storage proxy URL {mask(url)!r}: expected grpc://HOST:PORT, e.g. "
                           "grpc://127.0.0.1:13000 (see tuner storage serve)")
    return parts.hostname, port


def mask(url: str) -> str:
    """The URL with any password replaced by ``***``; unparsable URLs are shown without credentials."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        scheme, sep, rest = url.partition("://")
        return f"{scheme}{sep}{rest.rpartition('@')[2]}" if sep else "<unparsable URL>"


def _password(url: str) -> str | None:
    from sqlalchemy.engine import make_url

    try:
        password = make_url(url).password
    except Exception:  # noqa: BLE001 - unparsable: nothing to hide beyond what mask() drops
        return None
    return str(password) if password else None


def scrub(text: str, url: str) -> str:
    """Hide the URL's password wherever a driver's message repeats it."""
    password = _password(url)
    if not password:
        return text
    return re.sub(rf"(?<![A-Za-z0-9]){re.escape(password)}(?![A-Za-z0-9])", "***", text)


def parse_url(url: str) -> Any:
    """``url`` as a SQLAlchemy ``URL``, or a clear error."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url)
    except (ArgumentError, ValueError):
        raise StorageError(
            f"bad storage URL {mask(url)!r}: expected e.g. sqlite:///tuner.db, "
            "postgresql://user:password@host/db or mysql+pymysql://user:password@host/db"
        ) from None


def unknown_dialect(url: str, drivername: str) -> StorageError:
    return StorageError(f"storage {mask(url)}: unknown database dialect or driver {drivername!r}; use sqlite, "
                        "postgresql (psycopg), or mysql+pymysql")


# the driver modules `pip install 'tuner[db]'` installs (pyproject.toml), and the URL scheme of each per backend
_DB_EXTRA_MODULES = ("psycopg", "pymysql")
_DB_EXTRA_SCHEMES = {"postgresql": "postgresql+psycopg", "mysql": "mysql+pymysql", "mariadb": "mariadb+pymysql"}


def missing_driver(url: str, err: ImportError) -> StorageError:
    seen: BaseException | None = err  # Optuna raises its own ImportError from the driver's
    while seen is not None and not (isinstance(seen, ImportError) and seen.name):
        seen = seen.__cause__
    if not isinstance(seen, ImportError) or not seen.name:
        return StorageError(f"storage {mask(url)} needs a database driver that is not installed ({err})")
    module = seen.name.partition(".")[0]
    where = f"storage {mask(url)} needs the driver module {module}, which is not installed"
    if module in _DB_EXTRA_MODULES:
        return StorageError(f"{where}: pip install 'tuner[db]'")
    scheme = _DB_EXTRA_SCHEMES.get(parse_url(url).get_backend_name())
    if scheme is None:
        return StorageError(f"{where}; install it")
    other = parse_url(url).set(drivername=scheme).render_as_string(hide_password=True)
    return StorageError(f"{where}: use {other} (pip install 'tuner[db]'), or install {module}")


def unreachable(err: Exception, url: str) -> StorageError:
    """The error that kept ``url`` from opening, said by the driver beneath: Optuna wraps a refused
    connection ("too many clients") in a StorageInternalError about invalid data in a commit."""
    root: BaseException = err
    while True:
        beneath = getattr(root, "orig", None) or root.__cause__
        if not isinstance(beneath, BaseException) or beneath is root:
            break
        root = beneath
    reason = scrub(first_line(root, type(root).__name__), url)
    return StorageError(f"cannot open storage {mask(url)}: {reason}")
