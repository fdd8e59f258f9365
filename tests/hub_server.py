"""A local stand-in for the Hugging Face hub's file endpoint and for a plain web host, on 127.0.0.1 only.

It answers what `huggingface_hub` asks of the real hub when it locates and downloads a file: `HEAD` and `GET` on
`/datasets/<repo>/resolve/<revision>/<filename>`, with the headers the hub sends (`X-Repo-Commit`; the ETag, which is
the file's sha256 for LFS files and its git blob sha1 for small ones; `Content-Length`), and byte ranges for resumed
downloads. Other paths serve plain files, as a web host does. Tests can cut a transfer mid-file and fail the requests
after the cut, and read the log of what was asked. It runs in a thread and stops when the test's `with` block ends.
"""

from __future__ import annotations

import hashlib
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class Served:
    body: bytes
    etag: str | None = None  # None: a plain web file (no ETag checksum)


@dataclass
class HubServer:
    """Files by path; `cut_after`: the next GET of a file stops after that many bytes, and every later request for it
    answers 503 until `heal()`."""

    files: dict[str, Served] = field(default_factory=dict)
    log: list[tuple[str, str, str | None]] = field(default_factory=list)
    cut_after: int | None = None
    broken: bool = False

    def __enter__(self) -> "HubServer":
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._http.timeout = 10
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.shutdown()
        self._http.server_close()
        self._thread.join(timeout=10)

    @property
    def url(self) -> str:
        host, port = self._http.server_address[:2]
        return f"http://{host}:{port}"

    def hub_file(self, repo: str, filename: str, body: bytes, etag: str | None = None) -> str:
        """Serve `body` as a hub dataset file; the ETag is its sha256 unless given."""
        path = f"/datasets/{repo}/resolve/main/{filename}"
        self.files[path] = Served(body, etag or hashlib.sha256(body).hexdigest())
        return path

    def web_file(self, name: str, body: bytes) -> str:
        path = f"/files/{name}"
        self.files[path] = Served(body)
        return self.url + path

    def heal(self) -> None:
        self.broken = False

    def gets(self, path: str) -> list[str | None]:
        """The Range header of each GET of `path`, in order (None: the whole file)."""
        return [rng for method, p, rng in self.log if method == "GET" and p == path]


def git_blob_sha1(body: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(body) + body).hexdigest()


def _handler(server: HubServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = 10

        def log_message(self, *args: object) -> None:  # quiet: the log list records what tests need
            pass

        def do_HEAD(self) -> None:
            self._serve(body=False)

        def do_GET(self) -> None:
            self._serve(body=True)

        def _serve(self, body: bool) -> None:
            path = self.path.split("?")[0]
            server.log.append((self.command, path, self.headers.get("Range")))
            served = server.files.get(path)
            if served is None or server.broken:
                self.send_response(404 if served is None else 503)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            data, status, start = served.body, 200, 0
            match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
            if match:
                start, status = int(match.group(1)), 206
            self.send_response(status)
            if served.etag is not None:
                self.send_header("ETag", f'"{served.etag}"')
                self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("Accept-Ranges", "bytes")
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            if not body:
                return
            if server.cut_after is not None:
                # The connection drops mid-file: the client has been promised more bytes than it gets.
                self.wfile.write(data[start:start + server.cut_after])
                self.wfile.flush()
                server.cut_after, server.broken = None, True
                self.close_connection = True
                return
            self.wfile.write(data[start:])

    return Handler
