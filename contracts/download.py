"""Resumable, verified downloads and safe archive extraction: what the conversion's VOC download
(preprocessing/download.py) and the import of Google's published models (inference/importing.py) share.

Files from university servers are large and their connections drop, so a fetch resumes its `<name>.part` with an
HTTP Range request, and a published md5 is checked before anything is extracted. Archive members that would write
outside the target (absolute paths, `..`, links leaving it, device files) are refused with tarfile's "data" filter.
"""

import hashlib
import http.client
import logging
import os
import re
import sys
import tarfile
from typing import TextIO
import urllib.error
import urllib.request

from contracts import console
from contracts import errors

TIMEOUT_S = 60  # per socket operation: a stalled server becomes a resumable DownloadError, not a hang
_CHUNK = 1 << 20

_log = logging.getLogger(__name__)


class DownloadError(errors.UserError, RuntimeError):
  """A failure the user can act on; the message says what happened and what to do."""


def fetch(url: str, path: str, md5: str | None, *, option: str = "url", progress_stream: TextIO | None = None) -> str:
  """Downloads `url` to `path` unless a file with checksum `md5` is there; resumes `path + '.part'`.

  `option` names the argument that sets the URL, for the error messages. md5=None: no published checksum, so a
  complete `path` is taken as it is and a new download is not verified (its md5 is logged).
  """
  if os.path.isfile(path) and md5 is None:
    _log.info("%s is there (md5 %s): not downloading", path, file_md5(path))
    return path
  if os.path.isfile(path):
    actual = file_md5(path)
    if actual == md5:
      _log.info("%s is complete (md5 %s): not downloading", path, md5)
      return path
    _log.warning("%s has md5 %s, expected %s: downloading it again", path, actual, md5)
    os.remove(path)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  part = path + ".part"
  _download_to_part(url, part, option, progress_stream or sys.stderr)
  actual = file_md5(part)
  if md5 is None:
    _log.info("%s: md5 %s (no checksum given to verify it against)", url, actual)
  elif actual != md5:
    os.remove(part)
    raise DownloadError(
      f"{url} gave a file with md5 {actual}, expected {md5} (deleted it): re-run to download "
      f"again, or pass a mirror that serves the published file ({option}=...)"
    )
  os.replace(part, path)
  return path


def file_md5(path: str) -> str:
  # hashlib.file_digest is Python 3.11+; setup.py allows 3.10.
  digest = hashlib.md5(usedforsecurity=False)
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def archive_name(url: str) -> str:
  return os.path.basename(url.split("?", 1)[0].rstrip("/")) or "download"


def _download_to_part(url: str, part: str, option: str, stream: TextIO) -> None:
  """Appends the rest of `url` to `part` (Range request); starts over when the server cannot resume."""
  offset = os.path.getsize(part) if os.path.isfile(part) else 0
  request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
  try:
    response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
  except urllib.error.HTTPError as e:
    if e.code == 416 and offset:  # the .part is not a prefix of what the server has now
      _log.warning("%s refused to resume %s at byte %d: starting over", url, part, offset)
      os.remove(part)
      return _download_to_part(url, part, option, stream)
    raise DownloadError(
      f"{url} answered HTTP {e.code} {e.reason}: check the URL, or pass a mirror URL ({option}=...)"
    ) from e
  except (urllib.error.URLError, OSError) as e:
    reason = getattr(e, "reason", e)
    raise DownloadError(
      f"cannot reach {url} ({reason}): check the network and re-run (downloads resume), "
      f"or pass a mirror URL ({option}=...)"
    ) from e

  with response:
    total = None
    if response.status == 206:
      match = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", response.headers.get("Content-Range", ""))
      if not match or int(match[1]) != offset:
        raise DownloadError(
          f"{url} answered a Range request for byte {offset} with Content-Range "
          f"{response.headers.get('Content-Range')!r}; delete {part} and re-run"
        )
      total = int(match[2]) if match[2] != "*" else None
      _log.info("resuming %s at byte %d", url, offset)
    else:
      if offset:
        _log.info("%s does not resume downloads (HTTP %d): starting over", url, response.status)
      offset = 0
      length = response.headers.get("Content-Length")
      total = int(length) if length else None

    progress = console.Progress(
      os.path.basename(part).removesuffix(".part"), total, start=offset, sizes=True, stream=stream
    )
    done = offset
    try:
      with open(part, "ab" if offset else "wb") as out:
        while chunk := response.read(_CHUNK):
          out.write(chunk)
          done += len(chunk)
          progress.update(done)
    except (OSError, http.client.HTTPException) as e:
      raise DownloadError(
        f"download of {url} stopped at {console.size_text(done)} ({e}); re-run to resume from {part}"
      ) from e
    finally:
      progress.close()
    if total is not None and done < total:
      raise DownloadError(
        f"download of {url} was cut off at {console.size_text(done)} of {console.size_text(total)}; "
        f"re-run to resume from {part}"
      )


def _refuse_unsafe(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
  """tarfile's "data" filter, plus refusing absolute and `..` names (the filter would only rewrite them)."""
  if member.name.startswith(("/", os.sep)) or ".." in member.name.replace(os.sep, "/").split("/"):
    raise DownloadError(f"refusing archive member {member.name!r}: its path leaves the extraction folder")
  try:
    return tarfile.data_filter(member, dest)
  except tarfile.FilterError as e:
    raise DownloadError(f"refusing archive member {member.name!r}: {e}") from e


def extract_archive(archive: str, dest: str, wanted=None) -> None:
  try:
    with tarfile.open(archive) as tar:
      members = (m for m in tar if wanted is None or wanted(m))
      tar.extractall(dest, members=members, filter=_refuse_unsafe)
  except (tarfile.TarError, EOFError, OSError) as e:
    raise DownloadError(f"cannot extract {archive} ({e}); delete it and re-run to download it again") from e
