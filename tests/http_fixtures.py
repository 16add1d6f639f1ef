"""A local HTTP file server for download tests: Range requests, errors and cut connections on demand."""

import dataclasses
import http.server
import re
import threading


@dataclasses.dataclass
class Route:
  body: bytes = b""
  status: int = 200  # anything else is answered as an error with no body
  honour_range: bool = True  # False: answer 200 with the whole body, as servers without resume do
  drop_after: int | None = None  # send only this many body bytes, then close the connection...
  drops_left: int = 1  # ...this many times


class ArchiveServer:
  """ThreadingHTTPServer on 127.0.0.1:<free port>; `requests` logs (path, Range header) of every GET."""

  def __init__(self):
    self.routes: dict[str, Route] = {}
    self.requests: list[tuple[str, str | None]] = []
    server = self

    class Handler(http.server.BaseHTTPRequestHandler):
      def log_message(self, *args):  # keep test output clean
        pass

      def do_GET(self):
        server.requests.append((self.path, self.headers.get("Range")))
        route = server.routes.get(self.path)
        if route is None or route.status != 200:
          self.send_error(route.status if route else 404)
          return
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if match and route.honour_range:
          start = int(match[1])
          if start >= len(route.body):
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(route.body)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
          self.send_response(206)
          self.send_header("Content-Range", f"bytes {start}-{len(route.body) - 1}/{len(route.body)}")
        else:
          self.send_response(200)
        body = route.body[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if route.drop_after is not None and route.drops_left > 0:
          route.drops_left -= 1
          body = body[: route.drop_after]
        self.wfile.write(body)
        self.close_connection = True

    self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

  def add(self, path: str, **route) -> str:
    """Serves `path` as described by Route(**route); returns its URL."""
    self.routes[path] = Route(**route)
    return self.url(path)

  def url(self, path: str) -> str:
    return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

  def __enter__(self) -> "ArchiveServer":
    self.thread.start()
    return self

  def __exit__(self, *exc) -> None:
    self.httpd.shutdown()
    self.httpd.server_close()
