"""Fetches Pascal VOC 2012 (and optionally SBD's train_aug masks) into a local VOCdevkit-style folder.

Downloads are 2 GB (VOC) and 1.4 GB (SBD) from university servers that are slow and drop connections; the fetch
(contracts/download.py) resumes them and checks the published md5 before anything is extracted. Extraction goes
into a hidden temporary folder beside the target and is moved into place only when complete: a folder with
`JPEGImages/` is always a whole one. Unsafe archive members are refused (contracts/download.py).
"""

import logging
import os
import re
import shutil
import tempfile

from contracts import voc
from contracts.download import DownloadError
from contracts.download import archive_name
from contracts.download import extract_archive
from contracts.download import fetch
from preprocessing import sbd

VOC_URL = "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar"
VOC_MD5 = "6cd6e144f989b92b3379bac3b3de84fd"  # the published checksum of that tar
SBD_URL = "http://www.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/benchmark.tgz"
SBD_MD5 = "82b4d87ceb2ed10f6038a1cba92111cb"

_EXTRACTING_PREFIX = ".extracting-"
# The only parts of SBD we need: VOC2012's JPEGImages already holds every SBD image.
_SBD_MEMBER = re.compile(r"(^|/)dataset/(cls/[^/]+\.mat|train\.txt|val\.txt)$")

_log = logging.getLogger(__name__)


def ensure_voc(
  voc_root: str,
  *,
  download_dir: str | None = None,
  force: bool = False,
  url: str = VOC_URL,
  md5: str = VOC_MD5,
  with_sbd: bool = False,
  sbd_url: str = SBD_URL,
  sbd_md5: str = SBD_MD5,
) -> str:
  """Makes `voc_root` a VOC2012 folder (JPEGImages, SegmentationClass, ImageSets/...) and returns it.

  Downloads + verifies + extracts when voc_root has no JPEGImages (or force=True). With with_sbd, also adds
  SegmentationClassAug/ and ImageSets/Segmentation/train_aug.txt (skipped if already there unless force).
  Archives are kept in `download_dir` (default: `downloads/` beside voc_root); one with the right checksum is
  never fetched again, so force=True re-extracts from it without network.
  """
  for name, path in (("voc_root", voc_root), ("download_dir", download_dir)):
    if path and "://" in path:
      raise DownloadError(
        f"{name}={path}: ensure_voc writes local folders only; download to a local folder, "
        f"then copy it (e.g. `gcloud storage cp -r LOCAL_DIR {path}`)"
      )
  voc_root = os.path.abspath(voc_root)
  download_dir = os.path.abspath(download_dir or os.path.join(os.path.dirname(voc_root), "downloads"))

  try:
    if force or not os.path.isdir(os.path.join(voc_root, voc.IMAGE_DIR)):
      archive = fetch(url, os.path.join(download_dir, archive_name(url)), md5)
      _install_voc(archive, voc_root)
    else:
      _log.info("%s already holds VOC2012 (%s/): not downloading", voc_root, voc.IMAGE_DIR)

    if with_sbd:
      train_aug = os.path.join(voc_root, voc.SPLIT_DIR, sbd.TRAIN_AUG_FILE)
      if force or not (os.path.isfile(train_aug) and os.path.isdir(os.path.join(voc_root, voc.AUG_MASK_DIR))):
        archive = fetch(sbd_url, os.path.join(download_dir, archive_name(sbd_url)), sbd_md5, option="sbd_url")
        _install_sbd(archive, voc_root, download_dir)
      else:
        _log.info("%s already exists: not rebuilding SBD train_aug", train_aug)
  except OSError as e:  # e.g. no permission, disk full: say which file
    raise DownloadError(
      f"cannot write {e.filename or voc_root} ({e.strerror or e}): check that folder's "
      f"permissions and free space, then re-run"
    ) from e
  return voc_root


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
      raise DownloadError(f"{archive} has no {voc.IMAGE_DIR}/ folder: it is not a VOC2012 trainval tar; check url=...")
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
      raise DownloadError(
        f"{archive} has no dataset/{{cls/,train.txt,val.txt}}: it is not SBD's benchmark.tgz; check sbd_url=..."
      )
    try:
      sbd.build_train_aug(voc_root, dataset)
    except (ValueError, OSError) as e:
      raise DownloadError(f"cannot build train_aug from {archive} into {voc_root}: {e}") from e
  finally:
    shutil.rmtree(temp, ignore_errors=True)
