"""Fetches Pascal VOC 2012 (and optionally SBD's train_aug masks) into a local VOCdevkit-style folder.

Downloads are 2 GB (VOC) and 1.4 GB (SBD) from university servers that are slow and drop connections, so a
fetch resumes its `<name>.part` with an HTTP Range request, and the published md5 is checked before anything
is extracted. Extraction goes into a hidden temporary folder beside the target and is moved into place only
when complete: a folder with `JPEGImages/` is always a whole one. Members that would write outside the target
(absolute paths, `..`, links leaving it, device files) are refused with tarfile's "data" filter.
"""

import hashlib
import http.client
import logging
import os
import re
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
from typing import TextIO

from contracts import console
from contracts import voc
from preprocessing import sbd

VOC_URL = "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar"
VOC_MD5 = "6cd6e144f989b92b3379bac3b3de84fd"  # the published checksum of that tar
SBD_URL = "http://www.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/benchmark.tgz"
SBD_MD5 = "82b4d87ceb2ed10f6038a1cba92111cb"

TIMEOUT_S = 60  # per socket operation: a stalled server becomes a resumable DownloadError, not a hang
_CHUNK = 1 << 20
_EXTRACTING_PREFIX = ".extracting-"
# The only parts of SBD we need: VOC2012's JPEGImages already holds every SBD image.
_SBD_MEMBER = re.compile(r"(^|/)dataset/(cls/[^/]+\.mat|train\.txt|val\.txt)$")

_log = logging.getLogger(__name__)


class DownloadError(RuntimeError):
  """A failure the user can act on; the message says what happened and what to do."""


def ensure_voc(voc_root: str, *, download_dir: str | None = None, force: bool = False,
               url: str = VOC_URL, md5: str = VOC_MD5,
               with_sbd: bool = False, sbd_url: str = SBD_URL, sbd_md5: str = SBD_MD5) -> str:
  """Makes `voc_root` a VOC2012 folder (JPEGImages, SegmentationClass, ImageSets/...) and returns it.

  Downloads + verifies + extracts when voc_root has no JPEGImages (or force=True). With with_sbd, also adds
  SegmentationClassAug/ and ImageSets/Segmentation/train_aug.txt (skipped if already there unless force).
  Archives are kept in `download_dir` (default: `downloads/` beside voc_root); one with the right checksum is
  never fetched again, so force=True re-extracts from it without network.
  """
  for name, path in (("voc_root", voc_root), ("download_dir", download_dir)):
    if path and "://" in path:
      raise DownloadError(f"{name}={path}: ensure_voc writes local folders only; download to a local folder, "
                          f"then copy it (e.g. `gcloud storage cp -r LOCAL_DIR {path}`)")
  voc_root = os.path.abspath(voc_root)
  download_dir = os.path.abspath(download_dir or os.path.join(os.path.dirname(voc_root), "downloads"))

  try:
    if force or not os.path.isdir(os.path.join(voc_root, voc.IMAGE_DIR)):
      archive = fetch(url, os.path.join(download_dir, _archive_name(url)), md5)
      _install_voc(archive, voc_root)
    else:
      _log.info("%s already holds VOC2012 (%s/): not downloading", voc_root, voc.IMAGE_DIR)

    if with_sbd:
      train_aug = os.path.join(voc_root, voc.SPLIT_DIR, sbd.TRAIN_AUG_FILE)
      if force or not (os.path.isfile(train_aug) and os.path.isdir(os.path.join(voc_root, voc.AUG_MASK_DIR))):
        archive = fetch(sbd_url, os.path.join(download_dir, _archive_name(sbd_url)), sbd_md5, option="sbd_url")
        _install_sbd(archive, voc_root, download_dir)
      else:
        _log.info("%s already exists: not rebuilding SBD train_aug", train_aug)
  except OSError as e:  # e.g. no permission, disk full: say which file
    raise DownloadError(f"cannot write {e.filename or voc_root} ({e.strerror or e}): check that folder's "
                        f"permissions and free space, then re-run") from e
  return voc_root


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
    raise DownloadError(f"{url} gave a file with md5 {actual}, expected {md5} (deleted it): re-run to download "
                        f"again, or pass a mirror that serves the published file ({option}=...)")
  os.replace(part, path)
  return path


def file_md5(path: str) -> str:
  with open(path, "rb") as f:
    return hashlib.file_digest(f, lambda: hashlib.md5(usedforsecurity=False)).hexdigest()


def _archive_name(url: str) -> str:
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
    raise DownloadError(f"{url} answered HTTP {e.code} {e.reason}: check the URL, or pass a mirror URL "
                        f"({option}=...)") from e
  except (urllib.error.URLError, OSError) as e:
    reason = getattr(e, "reason", e)
    raise DownloadError(f"cannot reach {url} ({reason}): check the network and re-run (downloads resume), "
                        f"or pass a mirror URL ({option}=...)") from e

  with response:
    total = None
    if response.status == 206:
      match = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", response.headers.get("Content-Range", ""))
      if not match or int(match[1]) != offset:
        raise DownloadError(f"{url} answered a Range request for byte {offset} with Content-Range "
                            f"{response.headers.get('Content-Range')!r}; delete {part} and re-run")
      total = int(match[2]) if match[2] != "*" else None
      _log.info("resuming %s at byte %d", url, offset)
    else:
      if offset:
        _log.info("%s does not resume downloads (HTTP %d): starting over", url, response.status)
      offset = 0
      length = response.headers.get("Content-Length")
      total = int(length) if length else None

    progress = console.Progress(os.path.basename(part).removesuffix(".part"), total, start=offset, sizes=True,
                                stream=stream)
    done = offset
    try:
      with open(part, "ab" if offset else "wb") as out:
        while chunk := response.read(_CHUNK):
          out.write(chunk)
          done += len(chunk)
          progress.update(done)
    except (OSError, http.client.HTTPException) as e:
      raise DownloadError(f"download of {url} stopped at {console.size_text(done)} ({e}); re-run to resume from "
                          f"{part}") from e
    finally:
      progress.close()
    if total is not None and done < total:
      raise DownloadError(f"download of {url} was cut off at {console.size_text(done)} of {console.size_text(total)}; "
                          f"re-run to resume from {part}")


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


def _temp_dir_beside(target: str) -> str:
  """A hidden folder on target's filesystem (so the final move is a rename); removes ones a crash left."""
  parent, name = os.path.split(target)
  os.makedirs(parent, exist_ok=True)
  prefix = f".{name}{_EXTRACTING_PREFIX}"
  for stale in os.listdir(parent):
    if stale.startswith(prefix):
      _log.info("removing %s, left by an interrupted extraction", os.path.join(parent, stale))
      shutil.rmtree(os.path.join(parent, stale), ignore_errors=True)
  return tempfile.mkdtemp(prefix=prefix, dir=parent)


def _install_voc(archive: str, voc_root: str) -> None:
  _log.info("extracting %s into %s", archive, voc_root)
  temp = _temp_dir_beside(voc_root)
  try:
    extract_archive(archive, temp)
    extracted = next((d for d, subdirs, _ in os.walk(temp) if voc.IMAGE_DIR in subdirs), None)
    if extracted is None:
      raise DownloadError(f"{archive} has no {voc.IMAGE_DIR}/ folder: it is not a VOC2012 trainval tar; "
                          f"check url=...")
    _move_into_place(extracted, voc_root)
  finally:
    shutil.rmtree(temp, ignore_errors=True)


def _move_into_place(extracted: str, voc_root: str) -> None:
  """Renames the extracted folder to voc_root; merges into an existing one with JPEGImages, the marker, last."""
  if not os.path.exists(voc_root):
    os.rename(extracted, voc_root)
    return
  marker = os.path.join(voc_root, voc.IMAGE_DIR)
  if os.path.isdir(marker):
    shutil.rmtree(marker)  # first: a half-replaced root must not look complete
  for name in sorted(os.listdir(extracted), key=lambda n: n == voc.IMAGE_DIR):
    target = os.path.join(voc_root, name)
    if os.path.isdir(target) and not os.path.islink(target):
      shutil.rmtree(target)
    elif os.path.lexists(target):
      os.remove(target)
    os.rename(os.path.join(extracted, name), target)


def _install_sbd(archive: str, voc_root: str, download_dir: str) -> None:
  _log.info("extracting SBD labels from %s", archive)
  temp = _temp_dir_beside(os.path.join(download_dir, "sbd"))
  try:
    extract_archive(archive, temp, wanted=lambda m: bool(_SBD_MEMBER.search(m.name)))
    dataset = next((d for d, _, files in os.walk(temp) if "train.txt" in files and "val.txt" in files), None)
    if dataset is None or not os.path.isdir(os.path.join(dataset, "cls")):
      raise DownloadError(f"{archive} has no dataset/{{cls/,train.txt,val.txt}}: it is not SBD's benchmark.tgz; "
                          f"check sbd_url=...")
    try:
      sbd.build_train_aug(voc_root, dataset)
    except (ValueError, OSError) as e:
      raise DownloadError(f"cannot build train_aug from {archive} into {voc_root}: {e}") from e
  finally:
    shutil.rmtree(temp, ignore_errors=True)
