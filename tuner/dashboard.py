"""A live dashboard over a study's storage: optuna-dashboard's web UI, served read-only on localhost.

optuna-dashboard (a maintained web UI for Optuna) is given a storage from
:func:`tuner.storage.reader.open_reader` rather than the URL: on SQLite that is a read-only connection,
so the dashboard's polling can never hold the write lock that running workers need (the "database
is locked" crash of optuna-dashboard issue #545), and it never creates a schema. Its editing
features (notes, deleting a study) fail with "readonly database" instead of touching the study.
The server is wsgiref's, as in ``optuna-dashboard``'s own command, but run here so that Ctrl+C
stops it cleanly and request lines do not flood the terminal.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from tuner.errors import TunerError

log = logging.getLogger(__name__)

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


class _Server(ThreadingMixIn, WSGIServer):
    """One thread per request; the threads are daemons, so an open browser tab does not delay Ctrl+C."""

    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        log.debug("%s - %s", self.address_string(), format % args)


def build_app(storage: Any) -> Any:
    """optuna-dashboard's WSGI application over an opened storage (see :func:`tuner.storage.reader.open_reader`)."""
    try:
        from optuna_dashboard import wsgi
    except ImportError:
        raise TunerError("the dashboard needs optuna-dashboard: pip install 'tuner[dashboard]'") from None
    return wsgi(storage)


def study_path(storage: Any, name: str, url: str) -> str:
    """The dashboard page of study ``name`` (``/dashboard/studies/ID``)."""
    from tuner.storage.studies import find_study_id

    return f"/dashboard/studies/{find_study_id(storage, name, url)}"


def serve(study: str, storage: str | None = None, host: str = "127.0.0.1", port: int = 8080) -> None:
    """Serve the dashboard of ``study`` until Ctrl+C (or SIGTERM); prints its URL once it listens.

    Args:
        study: a study file's name or path, or a study name in the storage (as for ``tuner report``).
        host: the address to bind; anything but localhost is warned about, since the dashboard has no login.
        port: the TCP port; 0 picks a free one.
    """
    from tuner.storage.reader import open_reader
    from tuner.storage.studies import locate_study
    from tuner.storage.urls import mask

    name, url, _ = locate_study(study, storage)
    backend = open_reader(url)
    path = study_path(backend, name, url)
    app = build_app(backend)
    try:
        server = make_server(host, port, app, server_class=_Server6 if ":" in host else _Server,
                             handler_class=_QuietHandler)
    except OSError as err:
        raise TunerError(f"cannot listen on {host}:{port} ({err.strerror or err}); pass another --port") from None
    # from here on, Ctrl+C closes the server: the handlers are in place before the URL is shown
    with _stop_on_signals():
        try:
            if host not in LOCAL_HOSTS:
                log.warning("the dashboard listens on %s, not only on this machine: anyone who can reach port %d "
                            "can read study %r. It has no login; prefer the default --host 127.0.0.1 and an SSH "
                            "tunnel", host, server.server_port, name)
            shown = f"[{host}]" if ":" in host else host
            print(f"dashboard of study {name} in {mask(url)}: http://{shown}:{server.server_port}{path}", flush=True)
            print("press Ctrl+C to stop", file=sys.stderr, flush=True)
            server.serve_forever()
        except KeyboardInterrupt:
            print("dashboard stopped", file=sys.stderr, flush=True)
        finally:
            server.server_close()


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[None]:
    """Ctrl+C and SIGTERM stop the server, even where a shell started it with SIGINT ignored (``cmd &``)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
