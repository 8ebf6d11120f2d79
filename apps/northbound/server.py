"""Serve a WSGI app from a daemon thread: wsgiref with one thread per request."""

from __future__ import annotations

import json
import logging
import socketserver
import threading
import uuid
from collections.abc import Callable
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from apps.northbound.api import make_app

__all__ = ["ThreadingWSGIServer", "make_app", "serve"]  # make_app re-exported: the controller imports both here

LOG = logging.getLogger(__name__)


DRAIN_LIMIT = 16 * 1024 * 1024  # at most this much of a body the app left unread is read (and dropped) at the end
DRAIN_TIMEOUT = 2.0


class _CountingReader:
    """The request stream, counting the bytes read from it."""

    def __init__(self, raw) -> None:
        self.raw = raw
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.count += len(data)
        return data

    def readline(self, size: int = -1) -> bytes:
        data = self.raw.readline(size)
        self.count += len(data)
        return data

    def readlines(self, hint: int = -1) -> list[bytes]:
        lines = self.raw.readlines(hint)
        self.count += sum(len(line) for line in lines)
        return lines

    def __iter__(self):
        return iter(self.readline, b"")

    def __getattr__(self, name: str):
        return getattr(self.raw, name)


class _QuietHandler(WSGIRequestHandler):
    """Access log to the debug logger instead of stderr; HTTP-level errors as NeutronError JSON;
    the part of a request body the app did not read is read before the connection closes."""

    def setup(self) -> None:
        super().setup()
        self.rfile = _CountingReader(self.rfile)
        self._body_start: int | None = None

    def parse_request(self) -> bool:
        ok = super().parse_request()
        self._body_start = self.rfile.count
        return ok

    def finish(self) -> None:
        # Closing a socket with unread bytes in its receive buffer sends a RST, which can destroy
        # the answer before the client has read it (a GET or DELETE with a large body, say).
        try:
            self._drain()
        except (OSError, ValueError):
            pass
        super().finish()

    def _drain(self) -> None:
        if self._body_start is None or getattr(self, "headers", None) is None:
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            return
        left = min(length - (self.rfile.count - self._body_start), DRAIN_LIMIT)
        if left <= 0:
            return
        self.connection.settimeout(DRAIN_TIMEOUT)
        while left > 0:
            chunk = self.rfile.read(min(left, 65536))
            if not chunk:
                break
            left -= len(chunk)

    def log_message(self, format: str, *args: object) -> None:
        LOG.debug("%s " + format, self.address_string(), *args)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """An answer to a request that never reached the app (a bad request line, too long a URI or
        header): http.server's default is an HTML page; clients of this API expect Neutron's JSON."""
        short = self.responses.get(code, ("Error",))[0]
        kind = "HTTP" + "".join(w.capitalize() for w in short.replace("-", " ").split())
        body = json.dumps({"NeutronError": {"type": kind, "message": message or short, "detail": ""}}).encode()
        self.log_error("code %d, message %s", code, message)
        self.send_response(code, short)
        self.send_header("Connection", "close")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Openstack-Request-Id", f"req-{uuid.uuid4()}")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


class ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    """A wsgiref server handling each request in its own daemon thread."""

    daemon_threads = True
    allow_reuse_address = True
    thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The base URL, e.g. ``http://127.0.0.1:9696``."""
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def shutdown(self) -> None:
        """Stop serving, wait for the serving thread and close the socket."""
        super().shutdown()
        if self.thread is not None:
            self.thread.join(timeout=5)
        self.server_close()


def serve(app: Callable, host: str, port: int) -> ThreadingWSGIServer:
    """Start serving ``app`` on ``host:port`` (0: any free port) in a daemon thread.

    The returned server's ``server_port`` is the bound port and ``shutdown()`` stops it.
    """
    server = make_server(host, port, app, server_class=ThreadingWSGIServer, handler_class=_QuietHandler)
    # A short poll interval only bounds how long shutdown() waits for the loop to notice.
    server.thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                     name=f"northbound-{server.server_port}", daemon=True)
    server.thread.start()
    LOG.info("northbound API listening on %s", server.url)
    return server
