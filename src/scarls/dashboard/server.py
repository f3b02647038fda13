"""The dashboard's HTTP server: stdlib `ThreadingHTTPServer` on a background thread, no rclpy.

  GET /                               the page (static/index.html)
  GET /static/<file>                  its script, style sheet and the vendored uPlot
  GET /api/state                      `FleetState.snapshot()` as JSON (the page polls it 1/s)
  GET /api/camera/<ecu>/<camera>.jpg  the newest frame of that camera, JPEG (204: none yet)
  GET /healthz                        "ok"

A snapshot is built at most every `SNAPSHOT_TTL_S` whatever the number of pages; frames are
encoded only when asked (see `frames.FrameStore`).
"""

from __future__ import annotations

import json
import logging
import mimetypes
import socket
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

from scarls.dashboard.frames import FrameStore
from scarls.dashboard.state import FleetState

log = logging.getLogger('scarls.dashboard')
STATIC = Path(__file__).resolve().parent / 'static'
SNAPSHOT_TTL_S = 0.5


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = 'HTTP/1.1'

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        path = unquote(urlsplit(self.path).path)
        try:
            if path in ('/', '/index.html'):
                self._file(STATIC / 'index.html')
            elif path.startswith('/static/'):
                self._static(path[len('/static/'):])
            elif path == '/api/state':
                self._send(HTTPStatus.OK, self.server.state_json(), 'application/json')
            elif path.startswith('/api/camera/'):
                self._camera(path[len('/api/camera/'):])
            elif path == '/favicon.ico':
                self._send(HTTPStatus.NO_CONTENT, b'', 'image/x-icon')
            elif path == '/healthz':
                self._send(HTTPStatus.OK, b'ok\n', 'text/plain')
            else:
                self._send(HTTPStatus.NOT_FOUND, b'not found\n', 'text/plain')
        except (BrokenPipeError, ConnectionResetError):
            pass   # the page went away mid-answer

    def _static(self, name: str) -> None:
        target = (STATIC / name).resolve()
        if STATIC not in target.parents or not target.is_file():
            self._send(HTTPStatus.NOT_FOUND, b'not found\n', 'text/plain')
            return
        self._file(target)

    def _file(self, path: Path) -> None:
        ctype = mimetypes.guess_type(path.name)[0] or 'application/octet-stream'
        if ctype.startswith('text/') or ctype.endswith('javascript'):
            ctype += '; charset=utf-8'
        self._send(HTTPStatus.OK, path.read_bytes(), ctype, cache='max-age=60')

    def _camera(self, rest: str) -> None:
        ecu, _, name = rest.partition('/')
        camera = name.removesuffix('.jpg')
        if not ecu or not self.server.frames.known(ecu, camera):
            self._send(HTTPStatus.NOT_FOUND, b'unknown camera\n', 'text/plain')
            return
        try:
            got = self.server.frames.jpeg(ecu, camera)
        except ValueError as exc:   # an encoding the page cannot show
            self._send(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, f'{exc}\n'.encode(), 'text/plain')
            return
        if got is None:
            self._send(HTTPStatus.NO_CONTENT, b'', 'text/plain')
            return
        data, age = got
        self._send(HTTPStatus.OK, data, 'image/jpeg', extra={'X-Frame-Age': f'{age:.3f}'})

    def _send(self, status: HTTPStatus, body: bytes, ctype: str, cache: str = 'no-store',
              extra: dict | None = None) -> None:
        self.send_response(status)
        self.send_header('Content-Type', ctype)
        self.send_header('Content-Length', str(len(body)))
        self.send_header('Cache-Control', cache)
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if body and self.command != 'HEAD':
            self.wfile.write(body)

    def log_message(self, fmt: str, *args) -> None:
        log.debug('%s %s', self.address_string(), fmt % args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, state: FleetState, frames: FrameStore) -> None:
        self.state = state
        self.frames = frames
        self._cache: tuple[float, bytes] = (0.0, b'')
        self._cache_lock = threading.Lock()
        if ':' in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def state_json(self) -> bytes:
        with self._cache_lock:
            built, body = self._cache
            if time.monotonic() - built > SNAPSHOT_TTL_S or not body:
                body = json.dumps(self.state.snapshot(), separators=(',', ':'),
                                  allow_nan=False).encode()
                self._cache = (time.monotonic(), body)
            return body


class DashboardServer:
    """The HTTP server on a daemon thread; `stop()` closes it (idempotent)."""

    def __init__(self, state: FleetState, frames: FrameStore, host: str = '127.0.0.1',
                 port: int = 8080) -> None:
        self._httpd = _Server((host, port), state, frames)
        self.host = host
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        kwargs={'poll_interval': 0.5},
                                        name='dashboard-http', daemon=True)
        self._stopped = False

    @property
    def url(self) -> str:
        host = f'[{self.host}]' if ':' in self.host else self.host
        return f'http://{host}:{self.port}/'

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._thread.is_alive():
            self._httpd.shutdown()
        self._httpd.server_close()
