"""A local Google Cloud Storage for tests, reached by the real clients: TensorFlow's, Beam's and gcsfs.

    with GcsEmulator.start(workdir, bucket="test-bucket") as gcs:
      subprocess.run([...], env=os.environ | gcs.env())  # gs://test-bucket/... now lives in the emulator

One child process (this file run as a script) serves, on 127.0.0.1 only:
- gcp-storage-emulator (in memory), the JSON and XML APIs. Beam's GCS filesystem (google-cloud-storage) and
  gcsfs talk to it directly through STORAGE_EMULATOR_HOST.
- An HTTPS-intercepting proxy, for TensorFlow's C++ GCS filesystem: it has no endpoint setting (it calls
  https://www.googleapis.com/storage/v1/, .../upload/storage/v1/ and https://storage.googleapis.com/BUCKET/OBJ
  for reads) but its libcurl honours https_proxy, TF reads CURL_CA_BUNDLE for the CA file and
  GOOGLE_AUTH_TOKEN_FOR_TESTING gives it a token. The proxy answers CONNECT to those hosts with TLS under a
  throwaway CA and forwards the plain requests to the emulator; every other host is refused (403), so a test
  that would reach the internet fails instead. It also covers what the emulator lacks for TF: an empty
  uploadType=media upload (TF's `dir/` markers) becomes an empty resumable upload; libcurl's PUTs carry both
  `Transfer-Encoding: chunked` and Content-Length (the emulator would read by the latter); the emulator's
  http:// resumable-session Location is turned into https://.
- A fake oauth2.googleapis.com/token behind the same proxy, and a throwaway authorized_user credentials file:
  google.auth.default() finds credentials at once (without any, Beam retries for ~22 s, then goes anonymous)
  and refreshes them here (Python's requests honours https_proxy and REQUESTS_CA_BUNDLE).

The child exits when its stdin closes, so it cannot outlive the test process, even one killed with SIGKILL.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import http.client
import http.server
import json
import os
import pathlib
import re
import select
import ssl
import subprocess
import sys
import threading
import urllib.parse

# What TensorFlow's GCS filesystem connects to (tsl/platform/cloud/gcs_file_system.cc).
GCS_HOSTS = ("www.googleapis.com", "storage.googleapis.com")
TOKEN_HOST = "oauth2.googleapis.com"  # where google-auth refreshes user credentials (not configurable)
INTERCEPTED_HOSTS = GCS_HOSTS + (TOKEN_HOST,)
_START_TIMEOUT_S = 30


@dataclasses.dataclass
class GcsEmulator:
  """A running emulator child process; `env()` is what a client process needs to use it for gs://."""

  bucket: str
  emulator_url: str  # http://127.0.0.1:PORT, the emulator itself
  proxy_url: str  # http://127.0.0.1:PORT, the HTTPS-intercepting proxy
  ca_file: str
  credentials_file: str
  process: subprocess.Popen

  @classmethod
  def start(cls, workdir: str | os.PathLike, bucket: str = "test-bucket") -> GcsEmulator:
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    with open(workdir / "emulator.log", "wb") as log:
      process = subprocess.Popen(
        [sys.executable, __file__, f"--workdir={workdir}", f"--bucket={bucket}"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=log,
        start_new_session=True,
      )
    ready, _, _ = select.select([process.stdout], [], [], _START_TIMEOUT_S)
    line = process.stdout.readline() if ready else b""
    if not line:
      _stop(process)
      raise RuntimeError(f"the GCS emulator did not start; see {workdir / 'emulator.log'}")
    info = json.loads(line)
    return cls(
      bucket=bucket,
      emulator_url=info["emulator_url"],
      proxy_url=info["proxy_url"],
      ca_file=info["ca_file"],
      credentials_file=info["credentials_file"],
      process=process,
    )

  def env(self) -> dict[str, str]:
    """Environment variables that send every GCS client of a process here, and nothing to the internet."""
    return {
      "STORAGE_EMULATOR_HOST": self.emulator_url,  # google-cloud-storage (Beam), gcsfs
      "https_proxy": self.proxy_url,
      "HTTPS_PROXY": self.proxy_url,  # TF's libcurl; any other HTTPS
      "http_proxy": self.proxy_url,
      "HTTP_PROXY": self.proxy_url,  # plain HTTP too: refused unless GCS
      "no_proxy": "127.0.0.1,localhost",
      "NO_PROXY": "127.0.0.1,localhost",
      "CURL_CA_BUNDLE": self.ca_file,  # TF's libcurl trusts the proxy's throwaway CA...
      "REQUESTS_CA_BUNDLE": self.ca_file,  # ...and Python's requests (google-auth's token refresh)
      "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator-token",  # TF's GCS auth, no metadata server
      "GOOGLE_APPLICATION_CREDENTIALS": self.credentials_file,  # google.auth.default(), via the proxy
      "GOOGLE_CLOUD_PROJECT": "emulator-project",
      "NO_GCE_CHECK": "True",  # never probe a metadata server
      "CLOUDSDK_CONFIG": str(pathlib.Path(self.credentials_file).parent / "gcloud"),  # not the user's gcloud
      # gcsfs's default filesystem first asks the Storage Control gRPC API for the bucket's layout (60 s
      # timeouts against an emulator without it); its plain JSON-API filesystem is the one the emulator serves.
      "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
    }

  def filesystem(self):
    """A gcsfs filesystem on the emulator, for this process (no environment needed), listings uncached."""
    from gcsfs import core as gcsfs_core

    return gcsfs_core.GCSFileSystem(
      endpoint_url=self.emulator_url, token="anon", skip_instance_cache=True, use_listings_cache=False
    )

  def refused_hosts(self) -> set[str]:
    """Hosts a client tried to reach through the proxy and was refused (the internet, never reached)."""
    log = pathlib.Path(self.credentials_file).parent / "emulator.log"
    return set(re.findall(r"REFUSED a connection to (\S+)", log.read_text(errors="replace")))

  def stop(self) -> None:
    _stop(self.process)

  def __enter__(self) -> GcsEmulator:
    return self

  def __exit__(self, *exc) -> None:
    self.stop()


def _stop(process: subprocess.Popen) -> None:
  """Closing stdin asks the child to exit; it is killed if it has not within a few seconds."""
  for stream in (process.stdin, process.stdout):
    if stream:
      stream.close()
  try:
    process.wait(timeout=5)
  except subprocess.TimeoutExpired:
    process.kill()
    process.wait()


# ------------------------------------------------------------------------------------- the child process


def _make_certificates(workdir: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path, pathlib.Path]:
  """A throwaway CA (the clients trust it through CURL_CA_BUNDLE) and a certificate for INTERCEPTED_HOSTS."""
  from cryptography import x509
  from cryptography.hazmat.primitives import hashes
  from cryptography.hazmat.primitives import serialization
  from cryptography.hazmat.primitives.asymmetric import ec
  from cryptography.x509.oid import NameOID

  now = datetime.datetime.now(datetime.timezone.utc)
  not_before, not_after = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=1)
  ca_key = ec.generate_private_key(ec.SECP256R1())
  ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gcs-emulator test CA")])
  ca_cert = (
    x509.CertificateBuilder()
    .subject_name(ca_name)
    .issuer_name(ca_name)
    .public_key(ca_key.public_key())
    .serial_number(x509.random_serial_number())
    .not_valid_before(not_before)
    .not_valid_after(not_after)
    .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
    .add_extension(
      x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
      ),
      critical=True,
    )
    .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
    .sign(ca_key, hashes.SHA256())
  )
  leaf_key = ec.generate_private_key(ec.SECP256R1())
  leaf_cert = (
    x509.CertificateBuilder()
    .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, GCS_HOSTS[0])]))
    .issuer_name(ca_name)
    .public_key(leaf_key.public_key())
    .serial_number(x509.random_serial_number())
    .not_valid_before(not_before)
    .not_valid_after(not_after)
    .add_extension(x509.SubjectAlternativeName([x509.DNSName(host) for host in INTERCEPTED_HOSTS]), critical=False)
    .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    .sign(ca_key, hashes.SHA256())
  )
  pem = serialization.Encoding.PEM
  ca_file, cert_file, key_file = workdir / "ca.pem", workdir / "leaf.pem", workdir / "leaf.key"
  ca_file.write_bytes(ca_cert.public_bytes(pem))
  cert_file.write_bytes(leaf_cert.public_bytes(pem))
  key_file.write_bytes(leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
  return ca_file, cert_file, key_file


def _start_emulator(bucket: str) -> http.server.ThreadingHTTPServer:
  """gcp-storage-emulator's request handler on an in-memory store, one request at a time (its store is not
  thread-safe), on a free port."""
  from gcp_storage_emulator import server as emulator_server
  from gcp_storage_emulator.handlers import buckets
  from gcp_storage_emulator.storage import Storage

  storage = Storage(use_memory_fs=True)
  buckets.create_bucket(bucket, storage)
  lock = threading.Lock()

  class Handler(emulator_server.RequestHandler):
    def _serialized(self, method: str) -> None:
      with lock:
        emulator_server.Router(self).handle(method)

    do_GET = lambda self: self._serialized("GET")  # noqa: E731
    do_POST = lambda self: self._serialized("POST")  # noqa: E731
    do_PUT = lambda self: self._serialized("PUT")  # noqa: E731
    do_DELETE = lambda self: self._serialized("DELETE")  # noqa: E731
    do_PATCH = lambda self: self._serialized("PATCH")  # noqa: E731

    def log_message(self, format, *args):
      sys.stderr.write(f"emulator: {format % args}\n")

  httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, storage))
  httpd.daemon_threads = True
  threading.Thread(target=httpd.serve_forever, daemon=True).start()
  return httpd


_HOP_BY_HOP = {
  "connection",
  "keep-alive",
  "proxy-connection",
  "proxy-authorization",
  "te",
  "trailer",
  "transfer-encoding",
  "upgrade",
  "expect",
  "content-length",
}


class _ForwardToEmulator(http.server.BaseHTTPRequestHandler):
  """Serves the decrypted requests of one CONNECT tunnel (keep-alive) by forwarding them to the emulator."""

  protocol_version = "HTTP/1.1"  # keep-alive, and 100-continue for libcurl's large PUTs
  emulator_port: int

  def _forward(self) -> None:
    body = self._read_body()
    if self.headers.get("Host", "").split(":")[0] == TOKEN_HOST:
      return self._token()
    headers = {name: value for name, value in self.headers.items() if name.lower() not in _HOP_BY_HOP}
    try:
      if self.command == "POST" and not body and "uploadType=media" in self.path:
        status, reason, response_headers, data = self._empty_media_upload(headers)
      else:
        status, reason, response_headers, data = self._emulator(self.command, self.path, body, headers)
    except (OSError, http.client.HTTPException) as e:  # the emulator failed: the log above has its traceback
      status, reason, response_headers, data = 502, "Bad Gateway", [], f"emulator failed: {e}".encode()
    self.send_response(status, reason)
    for name, value in response_headers:
      if name.lower() in _HOP_BY_HOP:
        continue
      if name.lower() == "location":  # the emulator names its own scheme; the client came over TLS
        value = re.sub(r"^http://", "https://", value)
      self.send_header(name, value)
    self.send_header("Content-Length", str(len(data)))
    self.end_headers()
    if self.command != "HEAD":
      self.wfile.write(data)

  def _token(self) -> None:
    body = json.dumps({"access_token": "emulator-token", "expires_in": 3600, "token_type": "Bearer"}).encode()
    self.send_response(200)
    self.send_header("Content-Type", "application/json")
    self.send_header("Content-Length", str(len(body)))
    self.end_headers()
    self.wfile.write(body)

  def _read_body(self) -> bytes:
    """The request body; chunked wins over Content-Length (TF's libcurl PUTs send both)."""
    if "chunked" not in self.headers.get("Transfer-Encoding", "").lower():
      length = int(self.headers.get("Content-Length") or 0)
      return self.rfile.read(length) if length else b""
    chunks = []
    while size := int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16):
      chunks.append(self.rfile.read(size))
      self.rfile.readline()
    while self.rfile.readline().strip():  # trailers, up to the blank line
      pass
    return b"".join(chunks)

  def _emulator(self, method: str, path: str, body: bytes, headers: dict[str, str]):
    connection = http.client.HTTPConnection("127.0.0.1", self.emulator_port, timeout=60)
    try:
      connection.request(method, path, body=body, headers=headers)
      response = connection.getresponse()
      return response.status, response.reason, response.getheaders(), response.read()
    finally:
      connection.close()

  def _empty_media_upload(self, headers: dict[str, str]):
    """An empty object by uploadType=media (TF's CreateDir writes `dir/` so), which the emulator cannot take
    (it takes len() of the missing body): made as an empty resumable upload instead, which it supports."""
    status, reason, response_headers, data = self._emulator(
      "POST", self.path.replace("uploadType=media", "uploadType=resumable"), b"", headers
    )
    location = dict((name.lower(), value) for name, value in response_headers).get("location")
    if status != 200 or not location:
      return status, reason, response_headers, data
    session = urllib.parse.urlsplit(location)
    return self._emulator(
      "PUT", f"{session.path}?{session.query}", b"", {**headers, "Content-Range": "bytes */0", "Content-Length": "0"}
    )

  do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _forward

  def log_message(self, format, *args):
    sys.stderr.write(f"proxy tunnel: {format % args}\n")


class _ProxyHandler(_ForwardToEmulator):
  """CONNECT to an intercepted host -> TLS with the throwaway CA -> _ForwardToEmulator; plain HTTP to a GCS
  host -> the emulator; anything else (another host) -> 403."""

  tls_context: ssl.SSLContext
  forwarder: type[_ForwardToEmulator]

  def do_CONNECT(self):
    host = self.path.rsplit(":", 1)[0]
    if host not in INTERCEPTED_HOSTS:
      return self._refuse(host)
    self.send_response(200, "Connection established")
    self.end_headers()
    self.wfile.flush()
    try:
      tls = self.tls_context.wrap_socket(self.connection, server_side=True)
    except (ssl.SSLError, OSError) as e:
      sys.stderr.write(f"proxy: TLS handshake for {host} failed: {e}\n")
      self.close_connection = True
      return
    self.forwarder(tls, self.client_address, self.server)
    self.close_connection = True

  def _plain_http(self):
    """An absolute-URI request (http_proxy): GCS hosts go to the emulator, the rest is refused."""
    url = urllib.parse.urlsplit(self.path)
    if url.hostname in GCS_HOSTS:
      self.path = url.path + (f"?{url.query}" if url.query else "")
      return self._forward()
    return self._refuse(url.hostname or self.path)

  do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _plain_http

  def _refuse(self, host: str) -> None:
    sys.stderr.write(f"proxy: REFUSED a connection to {host} (tests never leave this machine)\n")
    self.send_error(403, f"the test GCS proxy does not reach {host}")
    self.close_connection = True

  def log_message(self, format, *args):
    sys.stderr.write(f"proxy: {format % args}\n")


def _start_proxy(emulator_port: int, cert_file: pathlib.Path, key_file: pathlib.Path):
  context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
  context.load_cert_chain(cert_file, key_file)
  forwarder = type("Forwarder", (_ForwardToEmulator,), {"emulator_port": emulator_port})
  handler = type(
    "Proxy", (_ProxyHandler,), {"tls_context": context, "forwarder": forwarder, "emulator_port": emulator_port}
  )
  httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
  httpd.daemon_threads = True
  threading.Thread(target=httpd.serve_forever, daemon=True).start()
  return httpd


def _serve(workdir: pathlib.Path, bucket: str) -> None:
  ca_file, cert_file, key_file = _make_certificates(workdir)
  emulator = _start_emulator(bucket)
  emulator_port = emulator.server_address[1]
  proxy = _start_proxy(emulator_port, cert_file, key_file)
  proxy_url = f"http://127.0.0.1:{proxy.server_address[1]}"
  credentials_file = workdir / "credentials.json"
  credentials_file.write_text(
    json.dumps(
      {"type": "authorized_user", "client_id": "emulator", "client_secret": "emulator", "refresh_token": "emulator"}
    )
  )
  sys.stdout.write(
    json.dumps(
      {
        "emulator_url": f"http://127.0.0.1:{emulator_port}",
        "proxy_url": proxy_url,
        "ca_file": str(ca_file),
        "credentials_file": str(credentials_file),
      }
    )
    + "\n"
  )
  sys.stdout.flush()
  sys.stdin.read()  # returns at EOF: the parent closed the pipe or died


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--bucket", required=True)
  args = parser.parse_args()
  _serve(pathlib.Path(args.workdir), args.bucket)


if __name__ == "__main__":
  main()
