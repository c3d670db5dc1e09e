"""A loopback HTTP server for the download tests: serves one byte string, with knobs for failures.

It honours ``Range: bytes=A-B`` (or answers with the whole file when ``ranges`` is off), and can
cut a transfer after some bytes, corrupt a byte range, delay answers or answer with an HTTP error.
Every Range header received is logged in ``requests``.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class ServerState:
    data: bytes = b""
    ranges: bool = True
    refuse_probe: bool = False
    cut_after: int | None = None
    cut_at_start: int | None = None
    corrupt: tuple[int, int] | None = None
    delay: float = 0.0
    status: int | None = None
    requests: list[str | None] = field(default_factory=list)
    bytes_served: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        st = self.server.state
        rng = self.headers.get("Range")
        with st.lock:
            st.requests.append(rng)
        if st.delay:
            time.sleep(st.delay)
        if st.status is not None:
            self.send_error(st.status)
            return
        data, size = st.data, len(st.data)
        start, end, status = 0, size - 1, 200
        honour = st.ranges and not (st.refuse_probe and rng == "bytes=0-0")
        if rng is not None and honour:
            match = re.fullmatch(r"bytes=(\d+)-(\d*)", rng.strip())
            if not match or int(match.group(1)) >= size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            start = int(match.group(1))
            end = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
            status = 206
        body = bytearray(data[start : end + 1])
        if st.corrupt is not None:
            a, b = st.corrupt
            for pos in range(max(a, start), min(b, end + 1)):
                body[pos - start] ^= 0xFF
        send = bytes(body)
        with st.lock:
            cut_here = start == (st.cut_at_start or 0) and rng != "bytes=0-0"  # not the probe
            if st.cut_after is not None and cut_here:
                send, st.cut_after = send[: st.cut_after], None
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Type", "application/zip")
        self.send_header("Accept-Ranges", "bytes" if st.ranges else "none")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        # counted before the write: once the client has the bytes it may reset the log at once,
        # and a count made after the write could land in the next test step (seen under load)
        with st.lock:
            st.bytes_served += len(send)
        try:
            self.wfile.write(send)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.close_connection = True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: ServerState


@dataclass
class Served:
    state: ServerState
    url: str

    def serve(self, data: bytes) -> None:
        self.state.data = data

    def reset_log(self) -> None:
        with self.state.lock:
            self.state.requests.clear()
            self.state.bytes_served = 0


@contextlib.contextmanager
def loopback_server(path: str = "/files/archive.zip") -> Iterator[Served]:
    """Run a :class:`Served` server on 127.0.0.1 (a free port) for the ``with`` block."""
    server = _Server(("127.0.0.1", 0), _Handler)
    server.state = ServerState()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    host, port = server.server_address[:2]
    try:
        yield Served(server.state, f"http://{host}:{port}{path}")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
