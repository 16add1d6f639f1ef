"""ensure_voc against a local HTTP server: verified, resumable downloads and safe, all-or-nothing extraction."""

import hashlib
import io
import os
import pathlib
import re
import socket
import tarfile

import numpy as np
from PIL import Image
import pytest
import scipy.io

from preprocessing.download import DownloadError
from preprocessing.download import ensure_voc
from tests.http_fixtures import ArchiveServer

pytestmark = pytest.mark.timeout(60)  # a network test that hangs must fail, not stall the suite

VOC_PREFIX = "VOCdevkit/VOC2012/"
SBD_PREFIX = "benchmark_RELEASE/dataset/"


def md5(data: bytes) -> str:
  return hashlib.md5(data).hexdigest()


def make_tar(files: dict[str, bytes], *, mode: str = "w", then: tuple[tarfile.TarInfo, ...] = ()) -> bytes:
  """An archive of `files` (regular files, in order), followed by the raw members `then` (links, devices)."""
  buffer = io.BytesIO()
  with tarfile.open(fileobj=buffer, mode=mode) as tar:
    for name, data in files.items():
      info = tarfile.TarInfo(name)
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))
    for info in then:
      tar.addfile(info)
  return buffer.getvalue()


def files_under(root: pathlib.Path) -> dict[str, bytes]:
  return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def sample_ids(voc_sample: pathlib.Path, split: str, count: int, skip: int = 0) -> list[str]:
  ids = (voc_sample / "ImageSets/Segmentation" / f"{split}.txt").read_text().split()
  return ids[skip : skip + count]


def voc_files(voc_sample: pathlib.Path, train: list[str], val: list[str], image_only=()) -> dict[str, bytes]:
  """A tiny VOC2012 root (paths relative to it) from real sample pairs; `image_only` ids get no official mask."""
  files = {}
  for image_id in train + val + list(image_only):
    files[f"JPEGImages/{image_id}.jpg"] = (voc_sample / "JPEGImages" / f"{image_id}.jpg").read_bytes()
  for image_id in train + val:
    files[f"SegmentationClass/{image_id}.png"] = (voc_sample / "SegmentationClass" / f"{image_id}.png").read_bytes()
  for split, ids in (("train", train), ("val", val), ("trainval", train + val)):
    files[f"ImageSets/Segmentation/{split}.txt"] = "".join(f"{i}\n" for i in ids).encode()
  return files


@pytest.fixture
def server():
  with ArchiveServer() as s:
    yield s


@pytest.fixture
def voc(voc_sample) -> dict[str, bytes]:
  return voc_files(voc_sample, sample_ids(voc_sample, "train", 3), sample_ids(voc_sample, "val", 2))


@pytest.fixture
def voc_tar(voc) -> bytes:
  return make_tar({VOC_PREFIX + name: data for name, data in voc.items()})


def test_download_extracts_archive_content_at_voc_root_and_caches(tmp_path, server, voc, voc_tar):
  url = server.add("/voc/VOCtrainval.tar", body=voc_tar)
  root = tmp_path / "pascal"

  assert ensure_voc(str(root), url=url, md5=md5(voc_tar)) == str(root)

  assert files_under(root) == voc
  assert (tmp_path / "downloads/VOCtrainval.tar").read_bytes() == voc_tar
  assert sorted(os.listdir(tmp_path)) == ["downloads", "pascal"]  # no temporary folders or .part left
  assert server.requests == [("/voc/VOCtrainval.tar", None)]

  ensure_voc(str(root), url=url, md5=md5(voc_tar))  # already there: no network
  (root / "JPEGImages").rename(tmp_path / "moved")  # gone: re-extract from the kept archive, no network
  (root / "SegmentationClass" / next(iter(os.listdir(root / "SegmentationClass")))).write_bytes(b"damaged")
  ensure_voc(str(root), url=url, md5=md5(voc_tar))
  assert files_under(root) == voc
  assert len(server.requests) == 1


def test_progress_is_reported_on_stderr(tmp_path, server, voc_tar, capsys):
  url = server.add("/VOCtrainval.tar", body=voc_tar)
  ensure_voc(str(tmp_path / "voc"), url=url, md5=md5(voc_tar))
  lines = capsys.readouterr().err.splitlines()
  assert lines and all(line.startswith("VOCtrainval.tar: ") for line in lines)
  assert "(100%)" in lines[-1] and "/s" in lines[-1]
  assert len(lines) <= 11  # not a TTY: about one line per 10%


def test_force_replaces_existing_root_from_kept_archive(tmp_path, server, voc, voc_tar):
  url = server.add("/VOCtrainval.tar", body=voc_tar)
  root = tmp_path / "voc"
  ensure_voc(str(root), url=url, md5=md5(voc_tar))
  (root / "JPEGImages" / "stale.jpg").write_bytes(b"not from the archive")

  ensure_voc(str(root), url=url, md5=md5(voc_tar), force=True)

  assert files_under(root) == voc
  assert len(server.requests) == 1


def test_existing_voc_root_is_used_without_network(tmp_path, server):
  url = server.add("/VOCtrainval.tar", status=500)
  (tmp_path / "mine" / "JPEGImages").mkdir(parents=True)
  assert ensure_voc(str(tmp_path / "mine"), url=url, md5="0" * 32) == str(tmp_path / "mine")
  assert server.requests == []


def test_checksum_mismatch_deletes_file_and_extracts_nothing(tmp_path, server, voc_tar):
  corrupted = bytearray(voc_tar)
  corrupted[len(corrupted) // 2] ^= 0xFF
  url = server.add("/VOCtrainval.tar", body=bytes(corrupted))

  with pytest.raises(DownloadError, match=f"md5 {md5(bytes(corrupted))}, expected {md5(voc_tar)}") as error:
    ensure_voc(str(tmp_path / "voc"), url=url, md5=md5(voc_tar))

  assert url in str(error.value) and "\n" not in str(error.value)
  assert sorted(os.listdir(tmp_path)) == ["downloads"]
  assert os.listdir(tmp_path / "downloads") == []


def test_interrupted_download_resumes_with_range_request(tmp_path, server, voc, voc_tar):
  cut = len(voc_tar) // 3
  url = server.add("/VOCtrainval.tar", body=voc_tar, drop_after=cut)
  root = tmp_path / "voc"

  with pytest.raises(DownloadError, match="re-run to resume"):
    ensure_voc(str(root), url=url, md5=md5(voc_tar))
  assert (tmp_path / "downloads/VOCtrainval.tar.part").stat().st_size == cut
  assert not root.exists()

  ensure_voc(str(root), url=url, md5=md5(voc_tar))

  assert server.requests == [("/VOCtrainval.tar", None), ("/VOCtrainval.tar", f"bytes={cut}-")]
  assert (tmp_path / "downloads/VOCtrainval.tar").read_bytes() == voc_tar
  assert files_under(root) == voc


@pytest.mark.parametrize("honour_range, part_size", [(False, 100), (True, "beyond the end")])
def test_download_starts_over_when_part_cannot_be_resumed(tmp_path, server, voc, voc_tar, honour_range, part_size):
  """A server without Range support answers 200; a .part longer than the file gets 416. Both restart cleanly."""
  url = server.add("/VOCtrainval.tar", body=voc_tar, honour_range=honour_range)
  size = len(voc_tar) + 10 if part_size == "beyond the end" else part_size
  (tmp_path / "downloads").mkdir()
  (tmp_path / "downloads/VOCtrainval.tar.part").write_bytes(b"\xaa" * size)

  ensure_voc(str(tmp_path / "voc"), url=url, md5=md5(voc_tar))

  assert server.requests[0] == ("/VOCtrainval.tar", f"bytes={size}-")
  assert (tmp_path / "downloads/VOCtrainval.tar").read_bytes() == voc_tar
  assert files_under(tmp_path / "voc") == voc


@pytest.mark.parametrize("status", [404, 500])
def test_http_error_names_url_and_status(tmp_path, server, status):
  url = server.add("/VOCtrainval.tar", status=status)
  with pytest.raises(DownloadError, match=f"{re.escape(url)} answered HTTP {status}.*mirror"):
    ensure_voc(str(tmp_path / "voc"), url=url, md5="0" * 32)
  assert not (tmp_path / "voc").exists()


def test_connection_refused_names_url(tmp_path):
  with socket.socket() as s:  # a port nobody listens on
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  url = f"http://127.0.0.1:{port}/VOCtrainval.tar"
  with pytest.raises(DownloadError, match=f"cannot reach {re.escape(url)}.*re-run"):
    ensure_voc(str(tmp_path / "voc"), url=url, md5="0" * 32)


def test_cloud_voc_root_is_refused():
  with pytest.raises(DownloadError, match="download to a local folder, then copy"):
    ensure_voc("gs://bucket/VOC2012")


def _special(name: str, **attributes) -> tarfile.TarInfo:
  info = tarfile.TarInfo(name)
  for key, value in attributes.items():
    setattr(info, key, value)
  return info


@pytest.mark.parametrize("kind", ["absolute path", "dotdot", "symlink out", "absolute symlink", "device"])
def test_malicious_member_is_refused_and_nothing_escapes(tmp_path, server, voc, kind):
  outside = tmp_path / "outside"
  outside.mkdir()
  files = {VOC_PREFIX + name: data for name, data in voc.items()}  # good members first: extraction has begun
  then = ()
  if kind == "absolute path":
    bad = str(outside / "abs_escape.txt")
    files[bad] = b"pwned"
  elif kind == "dotdot":
    bad = "../escape.txt"
    files[bad] = b"pwned"
  elif kind == "device":
    bad = VOC_PREFIX + "null"
    then = (_special(bad, type=tarfile.CHRTYPE, devmajor=1, devminor=3),)
  else:  # a link leaving the folder, then a file written through it
    bad = VOC_PREFIX + "JPEGImages/link"
    target = "../../../../outside" if kind == "symlink out" else str(outside)
    then = (_special(bad, type=tarfile.SYMTYPE, linkname=target), _special(bad + "/through_link.txt"))
  archive = make_tar(files, then=then)
  url = server.add("/VOCtrainval.tar", body=archive)

  with pytest.raises(DownloadError, match=f"refusing archive member {re.escape(repr(bad))}"):
    ensure_voc(str(tmp_path / "voc"), url=url, md5=md5(archive))

  written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
  assert written == ["downloads", "downloads/VOCtrainval.tar", "outside"]  # no root, no temporary folder
  assert not (tmp_path.parent / "escape.txt").exists()


# --- SBD train_aug ---------------------------------------------------------------------------------------


def _gtcls(mask: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  scipy.io.savemat(
    buffer,
    {"GTcls": {"Segmentation": mask.astype(np.uint8), "CategoriesPresent": np.unique(mask[mask > 0]).astype(np.uint8)}},
  )
  return buffer.getvalue()


def _image_size(voc_sample: pathlib.Path, image_id: str) -> tuple[int, int]:
  with Image.open(voc_sample / "JPEGImages" / f"{image_id}.jpg") as image:
    return image.height, image.width


@pytest.fixture
def sbd_case(voc_sample):
  """VOC train {t1, t3}, val {v1} with official masks; SBD train {t1, x1}, val {v1, x2}; x1, x2 only in SBD."""
  t1, t3 = sample_ids(voc_sample, "train", 2)
  (v1,) = sample_ids(voc_sample, "val", 1)
  x1, x2 = sample_ids(voc_sample, "train", 2, skip=5)
  voc_tar = make_tar({VOC_PREFIX + n: d for n, d in voc_files(voc_sample, [t1, t3], [v1], [x1, x2]).items()})
  rng = np.random.default_rng(0)
  sbd_masks = {i: rng.integers(0, 21, _image_size(voc_sample, i), dtype=np.uint8) for i in (x1, x2)}
  sbd_masks |= {i: np.full(_image_size(voc_sample, i), 7, np.uint8) for i in (t1, v1)}  # official ones win
  sbd_files = {SBD_PREFIX + f"cls/{i}.mat": _gtcls(m) for i, m in sbd_masks.items()}
  sbd_files[SBD_PREFIX + "train.txt"] = f"{t1}\n{x1}\n".encode()
  sbd_files[SBD_PREFIX + "val.txt"] = f"{v1}\n{x2}\n".encode()
  sbd_files[SBD_PREFIX + f"img/{x1}.jpg"] = (voc_sample / "JPEGImages" / f"{x1}.jpg").read_bytes()
  return dict(
    ids=(t1, t3, v1, x1, x2),
    voc_tar=voc_tar,
    sbd_masks=sbd_masks,
    sbd_files=sbd_files,
    sbd_tgz=make_tar(sbd_files, mode="w:gz"),
  )


def test_sbd_train_aug_split_and_masks(tmp_path, server, voc_sample, sbd_case):
  t1, t3, v1, x1, x2 = sbd_case["ids"]
  voc_url = server.add("/VOCtrainval.tar", body=sbd_case["voc_tar"])
  sbd_url = server.add("/benchmark.tgz", body=sbd_case["sbd_tgz"])
  root = tmp_path / "voc"
  urls = dict(url=voc_url, md5=md5(sbd_case["voc_tar"]), sbd_url=sbd_url, sbd_md5=md5(sbd_case["sbd_tgz"]))
  ensure_voc(str(root), **urls)  # VOC first, SBD added later to the existing root

  ensure_voc(str(root), with_sbd=True, **urls)

  train_aug = (root / "ImageSets/Segmentation/train_aug.txt").read_text().split("\n")
  assert train_aug == sorted({t1, x1, v1, x2, t3} - {v1}) + [""]
  aug = root / "SegmentationClassAug"
  assert sorted(os.listdir(aug)) == sorted(f"{i}.png" for i in (t1, t3, v1, x1, x2))
  for image_id in (t1, t3, v1, x1, x2):
    with Image.open(aug / f"{image_id}.png") as png:
      assert png.mode == "L"
      mask = np.array(png)
    if image_id in (x1, x2):
      np.testing.assert_array_equal(mask, sbd_case["sbd_masks"][image_id])
    else:
      official = np.array(Image.open(voc_sample / "SegmentationClass" / f"{image_id}.png"))
      np.testing.assert_array_equal(mask, official)
      assert (mask == 255).any()  # the void boundary band survives
  assert not (root / "img").exists() and not (root / "JPEGImages" / "cls").exists()
  assert sorted(os.listdir(tmp_path / "downloads")) == ["VOCtrainval.tar", "benchmark.tgz"]
  assert [path for path, _ in server.requests] == ["/VOCtrainval.tar", "/benchmark.tgz"]

  ensure_voc(str(root), with_sbd=True, **urls)  # already there: no network
  assert len(server.requests) == 2


def test_sbd_file_without_gtcls_fails_without_marking_done(tmp_path, server, sbd_case):
  t1, t3, v1, x1, x2 = sbd_case["ids"]
  files = dict(sbd_case["sbd_files"])
  buffer = io.BytesIO()
  scipy.io.savemat(buffer, {"GTinst": {"Segmentation": np.zeros((4, 4), np.uint8)}})
  files[SBD_PREFIX + f"cls/{x2}.mat"] = buffer.getvalue()
  sbd_tgz = make_tar(files, mode="w:gz")
  voc_url = server.add("/VOCtrainval.tar", body=sbd_case["voc_tar"])
  sbd_url = server.add("/benchmark.tgz", body=sbd_tgz)

  with pytest.raises(DownloadError, match=f"{x2}.mat has no GTcls.Segmentation"):
    ensure_voc(
      str(tmp_path / "voc"),
      url=voc_url,
      md5=md5(sbd_case["voc_tar"]),
      with_sbd=True,
      sbd_url=sbd_url,
      sbd_md5=md5(sbd_tgz),
    )

  assert not (tmp_path / "voc/ImageSets/Segmentation/train_aug.txt").exists()
  assert not (tmp_path / "voc/SegmentationClassAug").exists()
  assert sorted(os.listdir(tmp_path / "downloads")) == ["VOCtrainval.tar", "benchmark.tgz"]


def test_kept_archive_with_wrong_checksum_is_downloaded_again(tmp_path, server, voc, voc_tar):
  url = server.add("/VOCtrainval.tar", body=voc_tar)
  (tmp_path / "downloads").mkdir()
  (tmp_path / "downloads/VOCtrainval.tar").write_bytes(voc_tar[:-1] + b"\1")  # e.g. damaged on disk

  ensure_voc(str(tmp_path / "voc"), url=url, md5=md5(voc_tar))

  assert server.requests == [("/VOCtrainval.tar", None)]
  assert files_under(tmp_path / "voc") == voc
