"""A UDP probe stream for latency benchmarks: a paced sender and a kernel-timestamping receiver.

Run inside a VM's namespace (``ip netns exec NS python -m apps.bench.udp_probe ...``):

- ``send DST PORT INTERVAL_S``: one datagram every ``INTERVAL_S`` seconds, payload
  ``seq`` (u64) + send time (f64, ``time.time()``), until killed;
- ``recv PORT``: prints ``ready`` once bound, then one line ``<arrival> <seq> <sent>``
  per datagram, where ``arrival`` is the kernel's receive timestamp (``SO_TIMESTAMPNS``,
  CLOCK_REALTIME, taken when the frame entered the VM's network stack), not the time
  this process got around to reading it. Same clock as ``time.time()`` in any process
  of this machine, so it compares directly with the moment an API call was made.
"""

from __future__ import annotations

import socket
import struct
import sys
import time

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux value; Python may not export it
PAYLOAD = struct.Struct("!Qd")
TIMESPEC = struct.Struct("@ll")


def send(dst: str, port: int, interval: float) -> None:
    """Send forever at a steady pace (deadline-based, so a late wakeup does not drift the rate)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    seq = 0
    next_at = time.monotonic()
    while True:
        try:
            sock.sendto(PAYLOAD.pack(seq, time.time()), (dst, port))
        except OSError:
            pass  # e.g. no route while the VM's NIC is being replaced: keep pacing
        seq += 1
        next_at += interval
        delay = next_at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        else:
            next_at = time.monotonic()  # fell behind: do not burst to catch up


def recv(port: int) -> None:
    """Print the kernel arrival time of every datagram on ``port``."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind(("0.0.0.0", port))
    out = sys.stdout
    out.write("ready\n")
    out.flush()
    while True:
        data, ancdata, _flags, _addr = sock.recvmsg(64, 64)
        arrival = time.time()  # fallback if the kernel gave no timestamp
        for level, kind, value in ancdata:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                sec, nsec = TIMESPEC.unpack(value[: TIMESPEC.size])
                arrival = sec + nsec / 1e9
        if len(data) >= PAYLOAD.size:
            seq, sent = PAYLOAD.unpack(data[: PAYLOAD.size])
            out.write(f"{arrival:.6f} {seq} {sent:.6f}\n")
            out.flush()


def main(argv: list[str]) -> int:
    """``send DST PORT INTERVAL_S`` or ``recv PORT``."""
    if argv[:1] == ["send"] and len(argv) == 4:
        send(argv[1], int(argv[2]), float(argv[3]))
    elif argv[:1] == ["recv"] and len(argv) == 2:
        recv(int(argv[1]))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
