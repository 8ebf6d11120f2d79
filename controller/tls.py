"""Switches prove who they are: TLS with per-hypervisor certificates (``ovs-pki``), on OpenFlow and OVSDB.

A switch connecting over TLS must present a certificate signed by the CA the controller was
given (``--ssl-ca-cert``, ``ovs-pki``'s ``switchca/cacert.pem``); the certificate's common name
is the hypervisor it speaks for (``ovs-pki req+sign hv1 switch`` makes ``hv1 id:<uuid>``,
``-u`` just ``hv1``). Where the channel then says which hypervisor it is (the OpenFlow datapath
id, the OVSDB ``Bridge.datapath_id``), the two must agree, or the connection is refused
(:func:`refuse`: logged and counted in ``tenantflow_switch_refusals_total{channel,reason}``).
A connection without TLS (the unix sockets, plain TCP where ``--allow-tcp`` allows it) carries
no name, and is trusted for what it says, as before.

This module holds what both channels share: the server context, the name in a certificate,
the refusal, and the OpenFlow TLS listener (the OVSDB manager does its handshakes in its own
loop, :mod:`controller.ovsdb`).
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from dataclasses import dataclass

from controller import metrics

LOG = logging.getLogger("tenantflow.tls")

HANDSHAKE_TIMEOUT = 10.0  # s a connecting switch has to finish its TLS handshake

# Why a connection was refused (the metric's ``reason`` label):
NO_CERTIFICATE = "no_certificate"  # the peer sent none
UNTRUSTED = "untrusted_certificate"  # not signed by our CA (or expired...)
HANDSHAKE = "handshake_failed"  # no TLS at all, a timeout, a protocol error
NO_NAME = "no_name"  # a trusted certificate without a common name
NAME_MISMATCH = "name_mismatch"  # the certificate names another hypervisor than the datapath id's
REASONS = (NO_CERTIFICATE, UNTRUSTED, HANDSHAKE, NO_NAME, NAME_MISMATCH)


@dataclass(frozen=True)
class TlsFiles:
    """The controller's private key and certificate, and the CA its switches' certificates are signed by."""

    private_key: str
    certificate: str
    ca_cert: str

    def server_context(self) -> ssl.SSLContext:
        """A TLS server context that requires a client certificate signed by ``ca_cert`` (TLS 1.2 at least)."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_cert_chain(self.certificate, self.private_key)
        ctx.load_verify_locations(self.ca_cert)
        ctx.num_tickets = 0  # switches never resume a session
        return ctx


class TlsSocket:
    """A switch's TLS connection that two threads may read and write at once (an OpenFlow connection's).

    An OpenSSL connection object must not be used by two threads at once, and ``ssl.SSLSocket``
    does not lock it (it releases the GIL inside ``SSL_read``/``SSL_write``), while an OpenFlow
    connection is read by its reader thread and written by os-ken's send thread and our echo
    replies at the same time. So the TLS state is an ``ssl.SSLObject`` on memory buffers,
    touched under one lock and never while waiting for the network; the socket's own reads
    and writes happen outside it.
    Whatever TLS produces goes out under the send lock in the order it was produced. The rest
    of the socket interface (timeouts, options, ``shutdown``, ``close``) is the TCP socket's.
    """

    RECV_SIZE = 256 * 1024

    def __init__(self, sock: socket.socket, ctx: ssl.SSLContext) -> None:
        self._sock = sock
        self._incoming, self._outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._tls = ctx.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self._lock = threading.Lock()  # the TLS state
        self._send_lock = threading.Lock()  # the socket's writes, in TLS's order

    def handshake(self) -> None:
        """The server's side of the handshake (the socket's timeout applies); ssl.SSLError if refused."""
        while True:
            try:
                with self._lock:
                    self._tls.do_handshake()
                self._flush()
                return
            except ssl.SSLWantReadError:
                self._flush()
                if not self._feed():
                    raise ConnectionError("closed during the TLS handshake") from None

    def getpeercert(self) -> dict:
        """The verified peer certificate, decoded."""
        return self._tls.getpeercert()

    def recv(self, bufsize: int) -> bytes:
        """Up to ``bufsize`` bytes of plain text; b"" at the end; the socket's timeout applies."""
        while True:
            with self._lock:
                try:
                    data = self._tls.read(bufsize)
                except ssl.SSLWantReadError:
                    data = None
                except ssl.SSLZeroReturnError:
                    data = b""
            self._flush()  # reading may have made TLS answer something (a key update)
            if data is not None:
                return data
            if not self._feed():
                return b""

    def sendall(self, data: bytes) -> None:
        """Encrypt and send ``data`` whole."""
        with self._send_lock:
            with self._lock:
                self._tls.write(data)
                out = self._outgoing.read()
            self._sock.sendall(out)

    def _feed(self) -> bool:
        """Hand the next bytes off the socket to TLS; False at the end of the stream."""
        data = self._sock.recv(self.RECV_SIZE)
        if not data:
            return False
        with self._lock:
            self._incoming.write(data)
        return True

    def _flush(self) -> None:
        with self._send_lock:
            with self._lock:
                out = self._outgoing.read()
            if out:
                self._sock.sendall(out)

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._sock, name)


def certificate_name(sock: ssl.SSLSocket | TlsSocket) -> str | None:
    """The hypervisor a verified peer certificate names: its common name without ``ovs-pki``'s `` id:...``."""
    cert = sock.getpeercert() or {}
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                name = value.split(" id:", 1)[0].strip()
                return name or None
    return None


def handshake_reason(exc: BaseException) -> str:
    """The refusal reason of a failed server handshake."""
    text = str(exc).lower()
    if "did not return a certificate" in text or "certificate required" in text:
        return NO_CERTIFICATE
    if isinstance(exc, ssl.SSLCertVerificationError) or "certificate verify failed" in text \
            or "unknown ca" in text or "bad certificate" in text:
        return UNTRUSTED
    return HANDSHAKE


def refuse(channel: str, reason: str, peer: object, detail: str) -> None:
    """Log and count a refused switch connection (``channel``: ``openflow`` or ``ovsdb``)."""
    metrics.SWITCH_REFUSALS.labels(channel, reason).inc()
    LOG.warning("%s connection from %s refused (%s): %s", channel, peer, reason, detail)


def export_refusals(channel: str) -> None:
    """Export the channel's refusal counters at 0 (an absent series reads as "no data", not "none")."""
    for reason in REASONS:
        metrics.SWITCH_REFUSALS.labels(channel, reason)


def serve_openflow(host: str, port: int, files: TlsFiles) -> socket.socket:
    """Accept OpenFlow switches over TLS on ``host:port`` (OVS: ``set-controller br-int ssl:IP:PORT``).

    Each connection gets its handshake in its own thread (a slow or silent peer holds no one
    up, and gives up after ``HANDSHAKE_TIMEOUT``); a peer without a trusted certificate naming
    a hypervisor is refused here, the rest is served like any other switch
    (:func:`controller.connection.serve_connection`) with the name attached, for the app to
    hold against the datapath id. Returns the listening socket (its port: the one bound).
    """
    from controller.connection import LISTEN_BACKLOG, serve_connection

    ctx = files.server_context()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server = socket.socket(family, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((host, port))
    server.listen(LISTEN_BACKLOG)
    export_refusals("openflow")

    def handle(conn: socket.socket, address: tuple) -> None:
        conn.settimeout(HANDSHAKE_TIMEOUT)
        tls = TlsSocket(conn, ctx)
        try:
            tls.handshake()
        except (ssl.SSLError, OSError) as exc:
            refuse("openflow", handshake_reason(exc), address, f"TLS handshake failed: {exc}")
            conn.close()
            return
        name = certificate_name(tls)
        if name is None:
            refuse("openflow", NO_NAME, address, "its certificate has no common name")
            tls.close()
            return
        serve_connection(tls, address, certificate_name=name)

    def accept_loop() -> None:
        while True:
            conn, address = server.accept()
            threading.Thread(target=handle, args=(conn, address), name="of-tls", daemon=True).start()

    threading.Thread(target=accept_loop, name="of-tls-accept", daemon=True).start()
    LOG.info("OpenFlow over TLS on %s:%d (switch certificates signed by %s)", host, server.getsockname()[1],
             files.ca_cert)
    return server
