"""Serve the API's WSGI app with waitress: a bounded pool of workers behind one event loop.

Why waitress (not wsgiref, not cheroot): its event loop reads each request, headers and
body, before a worker sees it, so a slow or idle client costs a socket and a few bytes,
never a thread (cheroot hands a connection to a worker at its first byte, and a client
that dribbles its headers holds that worker for as long as it likes). On top of
waitress, this module adds what the API promises its clients:

- overload answered, never dropped: when more than ``max_queue`` requests wait for a
  worker, the next one is answered at once with 503 and ``Retry-After`` (a NeutronError),
  ahead of the queue, and its connection closed after the answer;
- a read deadline: a request whose headers and body are not all in within
  ``read_timeout`` seconds of its first byte is answered 408 and its connection closed
  (a slowloris client holds nothing for long); an idle keep-alive connection is closed
  after ``idle_timeout`` seconds;
- every error the server answers itself (a malformed request line, too long a URI, too
  many or too large headers, a timeout, overload) is Neutron's JSON error body, like the
  app's own;
- the whole body is read before the app runs, so a body the app leaves unread never
  turns the close into a RST that destroys the answer (up to ``MAX_READ``; past it the
  server answers 413 at once);
- an access log line per answer on the debug logger.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from waitress import wasyncore
from waitress.adjustments import Adjustments
from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser
from waitress.server import TcpWSGIServer
from waitress.task import ErrorTask, ThreadedTaskDispatcher
from waitress.utilities import Error

from apps.northbound.api import make_app

__all__ = ["ApiServer", "ServerOptions", "make_app", "serve"]  # make_app re-exported: the controller imports both here

LOG = logging.getLogger(__name__)

MAX_READ = 16 * 1024 * 1024  # bodies up to this are read whole (the app refuses over 1 MiB with its own 413)
MAX_REQUEST_LINE = 65536  # as http.server: a longer request line is a 414
MAX_HEADERS = 100  # as http.server: more header lines is a 431
RETRY_AFTER = 1  # seconds, in a 503's Retry-After


def _somaxconn() -> int:
    """The kernel's cap on a listen backlog (a larger one is silently cut to it)."""
    try:
        with open("/proc/sys/net/core/somaxconn") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 1024


@dataclass(frozen=True)
class ServerOptions:
    """The API server's knobs (controller options ``--api-*``; see the README's "Run the controller")."""

    workers: int = 16  # threads running the app: the most requests served at once
    backlog: int = 0  # listen backlog (0: the kernel's maximum, net.core.somaxconn)
    connection_limit: int = 1000  # open connections; past it new ones wait in the backlog (never reset)
    max_queue: int = 512  # requests waiting for a worker; past it 503 + Retry-After
    read_timeout: float = 30.0  # seconds from a request's first byte to its last: else 408 and close
    idle_timeout: float = 60.0  # seconds a keep-alive connection may sit idle before it is closed


class _Refused(Error):
    """An answer the server gives itself; ``retry_after`` adds that header."""

    retry_after: int | None = None


class _UriTooLong(_Refused):
    code, reason = 414, "Request-URI Too Long"


class _TooManyHeaders(_Refused):
    code, reason = 431, "Request Header Fields Too Large"


class _ReadTimeout(_Refused):
    code, reason = 408, "Request Timeout"


class _Overloaded(_Refused):
    code, reason, retry_after = 503, "Service Unavailable", RETRY_AFTER


def neutron_error(code: int, reason: str, message: str) -> bytes:
    """Neutron's error body for an answer the server gives itself (``HTTPBadRequest``, ...)."""
    kind = "HTTP" + "".join(w.capitalize() for w in reason.replace("-", " ").split())
    return json.dumps({"NeutronError": {"type": kind, "message": message or reason, "detail": ""}}).encode()


class _JsonErrorTask(ErrorTask):
    """waitress's own error answers (text/plain) as Neutron's JSON, with a request id."""

    def execute(self) -> None:
        error = self.request.error
        body = neutron_error(error.code, error.reason, str(error.body))
        self.status = f"{error.code} {error.reason}"
        self.response_headers.extend([("Content-Type", "application/json"),
                                      ("X-Openstack-Request-Id", f"req-{uuid.uuid4()}")])
        if getattr(error, "retry_after", None):
            self.response_headers.append(("Retry-After", str(error.retry_after)))
        self.set_close_on_finish()
        self.content_length = len(body)
        if self.channel.server.on_refused is not None:
            self.channel.server.on_refused(error.code)
        LOG.debug("%s %s %s: %s", self.channel.addr[0] if self.channel.addr else "-", error.code,
                  getattr(self.request, "path", None) or "-", error.body)  # no path if the request line was bad
        self.write(body)


class _Parser(HTTPRequestParser):
    """waitress's parser, with http.server's limits on the request line and the number of headers."""

    late_error: Error | None = None

    def parse_header(self, header_plus: bytes) -> None:
        first, _, rest = header_plus.partition(b"\r\n")
        super().parse_header(header_plus)
        if len(first) > MAX_REQUEST_LINE:
            self.late_error = _UriTooLong(f"The request line is longer than {MAX_REQUEST_LINE} bytes.")
        elif rest.count(b"\n") + 1 > MAX_HEADERS:
            self.late_error = _TooManyHeaders(f"More than {MAX_HEADERS} headers.")

    def received(self, data: bytes) -> int:
        consumed = super().received(data)
        if self.completed and self.late_error is not None and not self.error:
            self.error = self.late_error  # only once the body is in: the close then resets nothing
        return consumed


class _Channel(HTTPChannel):
    """A connection; knows when the request it is reading began (for the read deadline)."""

    parser_class = _Parser
    error_task_class = _JsonErrorTask
    request_started: float | None = None
    timed_out = False

    def received(self, data: bytes) -> bool:
        if self.timed_out:
            return False  # answered 408 and closing: what follows is not a request
        if data and self.request is None:
            self.request_started = time.monotonic()
        done = super().received(data)
        if self.request is None:
            self.request_started = None
        return done

    def expire(self) -> None:
        """Answer the request being read with 408 (called on the event loop, like ``received``)."""
        with self.requests_lock:
            request = self.request
            if request is None or self.will_close or self.close_when_flushed:
                return
            self.timed_out = True
            request.error = _ReadTimeout("The request was not received in time.")
            request.completed = True
            self.request = self.request_started = None
            self.requests.append(request)
            if len(self.requests) == 1:
                self.server.add_task(self)


class _Dispatcher(ThreadedTaskDispatcher):
    """waitress's worker pool, without a warning per queued request (overload shows as 503s instead)."""

    def add_task(self, task, urgent: bool = False) -> None:
        with self.lock:
            if urgent:
                self.queue.appendleft(task)
            else:
                self.queue.append(task)
            self.queue_cv.notify()


class ApiServer(TcpWSGIServer):
    """The API's HTTP server: start with :func:`serve`, stop with :meth:`shutdown`."""

    channel_class = _Channel
    options: ServerOptions
    thread: threading.Thread | None = None
    on_refused: Callable[[int], None] | None = None  # told the status of each answer the server gives itself
    _stopping = False

    @property
    def server_port(self) -> int:
        """The bound port."""
        return int(self.effective_port)

    @property
    def url(self) -> str:
        """The base URL, e.g. ``http://127.0.0.1:9696``."""
        host = str(self.effective_host)
        return f"http://{'[' + host + ']' if ':' in host else host}:{self.server_port}"

    def add_task(self, channel: _Channel) -> None:
        """Queue a channel's next request for a worker, or answer it 503 at once if too many wait."""
        if len(self.task_dispatcher.queue) < self.options.max_queue or channel.requests[0].error:
            self.task_dispatcher.add_task(channel, urgent=bool(channel.requests[0].error))
            return
        channel.requests[0].error = _Overloaded("The server is overloaded; retry in a moment.")
        self.task_dispatcher.add_task(channel, urgent=True)  # a 503 costs no work: ahead of the queue

    def maintenance(self, now: float) -> None:
        """Close idle connections (waitress's) and answer 408 to requests not read within the deadline."""
        super().maintenance(now)
        cutoff = time.monotonic() - self.options.read_timeout
        for channel in list(self.active_channels.values()):
            started = getattr(channel, "request_started", None)
            if started is not None and started < cutoff:
                channel.expire()

    def loop(self) -> None:
        """The event loop, until :meth:`shutdown`."""
        while not self._stopping:
            wasyncore.loop(timeout=0.5, map=self._map, use_poll=True, count=1)

    def shutdown(self) -> None:
        """Stop serving: the event loop, the workers, every connection and the listening socket."""
        self._stopping = True
        self.pull_trigger()
        if self.thread is not None:
            self.thread.join(timeout=5)
        self.task_dispatcher.shutdown(timeout=2)
        wasyncore.close_all(self._map)


def _access_log(app: Callable) -> Callable:
    """``app``, logging each answer (address, method, path, status) on the debug logger."""
    def logged(environ: dict, start_response: Callable) -> Iterable[bytes]:
        if not LOG.isEnabledFor(logging.DEBUG):
            return app(environ, start_response)

        def start(status: str, headers: list, exc_info=None):
            query = environ.get("QUERY_STRING")
            LOG.debug('%s "%s %s%s" %s', environ.get("REMOTE_ADDR", "-"), environ.get("REQUEST_METHOD"),
                      environ.get("PATH_INFO", ""), "?" + query if query else "", status.split(" ", 1)[0])
            return start_response(status, headers, exc_info)
        return app(environ, start)
    return logged


def serve(app: Callable, host: str, port: int, options: ServerOptions | None = None,
          on_refused: Callable[[int], None] | None = None) -> ApiServer:
    """Start serving ``app`` on ``host:port`` (0: any free port) from a daemon thread and return at once.

    The returned server's ``server_port`` is the bound port and ``shutdown()`` stops it. ``on_refused(status)``
    is called for each answer the server gives without running ``app`` (503, 408, a malformed request).
    """
    options = options or ServerOptions()
    adj = Adjustments(
        host=host, port=port, threads=options.workers, backlog=options.backlog or _somaxconn(),
        connection_limit=options.connection_limit, channel_timeout=options.idle_timeout,
        cleanup_interval=max(0.2, min(options.read_timeout, options.idle_timeout) / 4),
        max_request_body_size=MAX_READ, ident="tenantflow", asyncore_use_poll=True, expose_tracebacks=False,
    )
    dispatcher = _Dispatcher()
    dispatcher.set_thread_count(options.workers)
    server = ApiServer(_access_log(app), map={}, adj=adj, dispatcher=dispatcher, sockinfo=adj.listen[0])
    server.options, server.on_refused = options, on_refused
    server.thread = threading.Thread(target=server.loop, name=f"northbound-{server.server_port}", daemon=True)
    server.thread.start()
    LOG.info("northbound API listening on %s (%d workers, backlog %d, up to %d connections)", server.url,
             options.workers, adj.backlog, options.connection_limit)
    return server
