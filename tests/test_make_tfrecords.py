"""The Beam conversion job end to end: VOC pairs, injected faults, exit codes, verification, stale shards.

The conversion of a whole VOC root runs on generated pairs (conftest's voc_data), so that a clone without ../shared
covers it, and again on the real VOC sample where ../shared is."""

import hashlib
import io
import json
import os
import pathlib
import subprocess
import sys
import tarfile

from absl import app
import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from contracts import schema
from contracts import shards
from contracts import voc
from preprocessing import conversion
from preprocessing import make_tfrecords
from preprocessing import pairs
from preprocessing import synthetic_voc
from tests.conftest import is_voc_sample
from tests.conftest import read_records
from tests.conftest import record_mask
from tests.http_fixtures import ArchiveServer

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run(voc_root, output_dir, *extra: str):
  return make_tfrecords.run(["make_tfrecords", f"--voc_root={voc_root}", f"--output_dir={output_dir}", *extra])


def _indices(png_path: pathlib.Path) -> np.ndarray:
  with Image.open(png_path) as image:
    return np.array(image)


def _rejected(output_dir: pathlib.Path, split: str) -> list[dict]:
  return [json.loads(line) for line in (output_dir / f"{split}-rejected.jsonl").read_text().splitlines()]


# --------------------------------------------------------------------------- a whole root (real or generated)


@pytest.fixture(scope="module")
def real_run(voc_data, tmp_path_factory):
  output_dir = tmp_path_factory.mktemp("voc_tfrecords")
  return output_dir, _run(voc_data, output_dir, "--splits=train,val")


def test_real_sample_counts_files_and_summaries(real_run, voc_data):
  output_dir, summaries = real_run
  assert sorted(os.listdir(output_dir)) == [
    "class_names.txt",
    "train-00000-of-00001.tfrecord",
    "train-rejected.jsonl",
    "train-summary.json",
    "val-00000-of-00001.tfrecord",
    "val-rejected.jsonl",
    "val-summary.json",
  ]
  assert (output_dir / "class_names.txt").read_text().split() == list(voc.CLASS_NAMES)
  for split, count in (("train", 311), ("val", 201)) if is_voc_sample(voc_data) else (("train", 16), ("val", 8)):
    assert count == len(voc.read_split_ids(str(voc_data), split))
    summary = json.loads((output_dir / f"{split}-summary.json").read_text())
    assert summary["listed"] == summary["read"] == summary["written"] == count
    assert summary["rejected"] == 0 and summary["rejected_by_reason"] == {}
    assert summary["verified"] is True and summary["problems"] == []
    assert summary["shards"] == [{"file": f"{split}-00000-of-00001.tfrecord", "records": count}]
    assert (output_dir / f"{split}-rejected.jsonl").read_text() == ""
    assert summaries[split].written == count


def test_real_sample_records_are_the_source_bytes_and_palette_indices(real_run, voc_data):
  output_dir, _ = real_run
  for split in ("train", "val"):
    records = read_records(output_dir, split)
    assert sorted(records) == sorted(voc.read_split_ids(str(voc_data), split))
    for image_id, features in records.items():
      assert features[schema.IMAGE_ENCODED] == (voc_data / voc.IMAGE_DIR / f"{image_id}.jpg").read_bytes()
      assert features[schema.IMAGE_FORMAT] == b"jpeg"
      indices = _indices(voc_data / voc.MASK_DIR / f"{image_id}.png")
      np.testing.assert_array_equal(record_mask(features), indices, err_msg=image_id)
      assert (features[schema.IMAGE_HEIGHT], features[schema.IMAGE_WIDTH]) == indices.shape


# ---------------------------------------------------------------------------------- generated data + faults


def _encode(array: np.ndarray, fmt: str) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format=fmt)
  return buffer.getvalue()


def _write(path: pathlib.Path, data: bytes) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(data)


def _inject_faults(root: pathlib.Path, train_ids: list[str]) -> tuple[list[str], dict[str, str], dict[str, np.ndarray]]:
  """Adds bad and unusual pairs to train; returns (train list, {bad id: reason}, {unusual good id: class ids})."""
  rng = np.random.default_rng(7)
  image, class_ids = synthetic_voc.make_pair(rng, 48, 64)
  jpeg = synthetic_voc.encode_jpeg(image)
  images, masks = root / voc.IMAGE_DIR, root / voc.MASK_DIR

  _write(masks / "bad_missing_image.png", voc.encode_palette_png(class_ids))
  _write(images / "bad_missing_mask.jpg", jpeg)
  _write(images / "bad_corrupt_image.jpg", b"\xff\xd8\xff\xe0 not really a JPEG")
  _write(masks / "bad_corrupt_image.png", voc.encode_palette_png(class_ids))
  _write(images / "bad_truncated_jpeg.jpg", jpeg[: len(jpeg) * 2 // 3])
  _write(masks / "bad_truncated_jpeg.png", voc.encode_palette_png(class_ids))
  mask_png = voc.encode_palette_png(class_ids)
  _write(images / "bad_truncated_png.jpg", jpeg)
  _write(masks / "bad_truncated_png.png", mask_png[: len(mask_png) // 2])
  _write(images / "bad_size.jpg", jpeg)
  _write(masks / "bad_size.png", voc.encode_palette_png(class_ids[:, :-5]))
  out_of_range = class_ids.copy()
  out_of_range[5, 5] = 42
  _write(images / "bad_label.jpg", jpeg)
  _write(masks / "bad_label.png", voc.encode_palette_png(out_of_range))
  odd_colours = voc.colorize(class_ids)
  odd_colours[:2, :2] = (10, 20, 30)
  _write(images / "bad_colour.jpg", jpeg)
  _write(masks / "bad_colour.png", _encode(odd_colours, "PNG"))
  _write(images / "bad_webp.jpg", b"RIFF\x10\x00\x00\x00WEBPVP8 " + b"\x00" * 8)  # a WebP header, no picture
  _write(masks / "bad_webp.png", voc.encode_palette_png(class_ids))

  # Unusual but good: a VOC-coloured RGB mask and a grayscale one.
  rgb_image, rgb_ids = synthetic_voc.make_pair(rng, 40, 56)
  _write(images / "good_rgb_mask.jpg", synthetic_voc.encode_jpeg(rgb_image))
  _write(masks / "good_rgb_mask.png", _encode(voc.colorize(rgb_ids), "PNG"))
  gray_image, gray_ids = synthetic_voc.make_pair(rng, 40, 56)
  _write(images / "good_gray_mask.jpg", synthetic_voc.encode_jpeg(gray_image))
  _write(masks / "good_gray_mask.png", voc.encode_label_png(gray_ids))

  bad = {
    "bad_missing_image": pairs.MISSING_IMAGE,
    "bad_missing_mask": pairs.MISSING_MASK,
    "bad_corrupt_image": pairs.CORRUPT_IMAGE,
    "bad_truncated_jpeg": pairs.CORRUPT_IMAGE,
    "bad_truncated_png": pairs.CORRUPT_MASK,
    "bad_size": pairs.SIZE_MISMATCH,
    "bad_label": pairs.LABEL_OUT_OF_RANGE,
    "bad_colour": pairs.UNKNOWN_MASK_COLOUR,
    "bad_webp": pairs.CORRUPT_IMAGE,
  }
  good = {"good_rgb_mask": rgb_ids, "good_gray_mask": gray_ids}
  listed = train_ids[:4] + list(bad) + [train_ids[1]] + train_ids[4:] + list(good) + [train_ids[1]]
  return listed, bad, good


@pytest.fixture(scope="module")
def faulty_run(tmp_path_factory):
  root = tmp_path_factory.mktemp("synthetic_voc")
  splits = synthetic_voc.write_dataset(str(root), num_train=10, num_val=4, num_aug_only=3, height=48, width=64)
  listed, bad, good = _inject_faults(root, splits["train"])
  synthetic_voc.write_split_list(str(root), "train", listed)
  output_dir = tmp_path_factory.mktemp("synthetic_tfrecords")
  stale = output_dir / "train-00003-of-00005.tfrecord"  # an earlier run with 5 shards
  stale.write_bytes(b"")
  unrelated = output_dir / "train_aug-notes.txt"
  unrelated.write_text("not ours")
  summaries = _run(root, output_dir, "--splits=train,val,train_aug", "--num_shards=2", "--max_rejected_fraction=1")
  return root, output_dir, splits, listed, bad, good, summaries


def test_each_bad_pair_is_rejected_with_its_reason(faulty_run):
  _, output_dir, splits, listed, bad, _, summaries = faulty_run
  rejected = _rejected(output_dir, "train")
  duplicate = splits["train"][1]
  assert sorted((r["id"], r["reason"]) for r in rejected) == sorted(
    list(bad.items()) + [(duplicate, pairs.DUPLICATE_ID)] * 2
  )
  assert all(r["split"] == "train" and r["detail"] for r in rejected)
  assert rejected == sorted(rejected, key=lambda r: (r["id"], r["reason"], r["detail"]))
  summary = json.loads((output_dir / "train-summary.json").read_text())
  assert summary["listed"] == len(listed) and summary["rejected"] == len(bad) + 2
  assert summary["written"] == len(listed) - len(bad) - 2 and summary["verified"]
  assert summary["rejected_by_reason"] == {
    pairs.CORRUPT_IMAGE: 3,
    pairs.CORRUPT_MASK: 1,
    pairs.DUPLICATE_ID: 2,
    pairs.LABEL_OUT_OF_RANGE: 1,
    pairs.MISSING_IMAGE: 1,
    pairs.MISSING_MASK: 1,
    pairs.SIZE_MISMATCH: 1,
    pairs.UNKNOWN_MASK_COLOUR: 1,
  }
  assert summaries["train"].rejected_by_reason == summary["rejected_by_reason"]


def test_good_pairs_are_written_byte_exact_next_to_bad_ones(faulty_run):
  root, output_dir, splits, _, _, good, _ = faulty_run
  records = read_records(output_dir, "train")
  assert sorted(records) == sorted(splits["train"] + list(good))
  for image_id, features in records.items():
    assert features[schema.IMAGE_ENCODED] == (root / voc.IMAGE_DIR / f"{image_id}.jpg").read_bytes()
    expected = good.get(image_id)
    if expected is None:
      expected = _indices(root / voc.MASK_DIR / f"{image_id}.png")
    np.testing.assert_array_equal(record_mask(features), expected, err_msg=image_id)
  assert _rejected(output_dir, "val") == [] and len(read_records(output_dir, "val")) == len(splits["val"])


def test_train_aug_reads_masks_from_segmentation_class_aug(faulty_run):
  root, output_dir, splits, _, _, _, summaries = faulty_run
  records = read_records(output_dir, "train_aug")
  assert sorted(records) == sorted(splits["train_aug"]) and summaries["train_aug"].rejected == 0
  aug_only = [i for i in splits["train_aug"] if not (root / voc.MASK_DIR / f"{i}.png").exists()]
  assert len(aug_only) == 3
  for image_id in aug_only:
    np.testing.assert_array_equal(record_mask(records[image_id]), _indices(root / voc.AUG_MASK_DIR / f"{image_id}.png"))


def test_shards_of_an_earlier_shard_count_are_deleted(faulty_run):
  _, output_dir, _, _, _, _, _ = faulty_run
  names = sorted(os.listdir(output_dir))
  assert [n for n in names if n.startswith("train-") and n.endswith(".tfrecord")] == [
    "train-00000-of-00002.tfrecord",
    "train-00001-of-00002.tfrecord",
  ]
  assert "train_aug-notes.txt" in names


@pytest.fixture(scope="module")
def small_voc(tmp_path_factory):
  """4 good pairs plus one listed id without an image: 20% rejected."""
  root = tmp_path_factory.mktemp("small_voc")
  splits = synthetic_voc.write_dataset(str(root), num_train=4, num_val=2, height=32, width=40, seed=1)
  synthetic_voc.write_split_list(str(root), "train", splits["train"] + ["not_there"])
  return root, splits


def test_too_many_rejected_exits_nonzero_with_one_line_after_writing(small_voc, tmp_path):
  root, splits = small_voc
  env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
  process = subprocess.run(
    [
      sys.executable,
      "-m",
      "preprocessing.make_tfrecords",
      f"--voc_root={root}",
      f"--output_dir={tmp_path}",
      "--splits=train",
      "--max_rejected_fraction=0.1",
      "--direct_running_mode=in_memory",
    ],
    cwd=REPO_ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert process.returncode == conversion.EXIT_TOO_MANY_REJECTED, process.stderr
  last_line = process.stderr.strip().splitlines()[-1]
  assert last_line.startswith("make_tfrecords: error: too many rejected pairs"), process.stderr
  assert "train: 1/5 rejected (20.0%)" in last_line
  assert "Traceback" not in process.stderr
  assert "train: 5/5 pairs" in process.stderr  # the progress line
  assert "train: 5 listed, 4 written in 1 shard(s), 1 rejected (missing_image 1)" in process.stdout
  assert sorted(read_records(tmp_path, "train")) == sorted(splits["train"])
  assert [r["reason"] for r in _rejected(tmp_path, "train")] == [pairs.MISSING_IMAGE]


def test_a_shortfall_in_the_written_shards_fails_verification(small_voc, tmp_path, monkeypatch):
  root, _ = small_voc
  stale = tmp_path / "val-00000-of-00003.tfrecord"
  stale.write_bytes(b"")
  real_count = shards.count_records
  monkeypatch.setattr(shards, "count_records", lambda path: real_count(path) - 1)  # a record lost
  with pytest.raises(conversion.JobFailed) as failure:
    _run(root, tmp_path, "--splits=val")
  assert failure.value.exit_code == conversion.EXIT_VERIFICATION
  assert "val: verification failed: 1 records in the shards, 2 were sent to the writer" in str(failure.value)
  assert "\n" not in str(failure.value)
  summary = json.loads((tmp_path / "val-summary.json").read_text())
  assert summary["verified"] is False and summary["written"] == 1 and summary["expected_written"] == 2
  assert stale.exists()  # nothing is cleaned up after a failed run


def test_count_records_reads_what_was_written(tmp_path):
  path = str(tmp_path / "x.tfrecord")
  with tf.io.TFRecordWriter(path) as writer:
    for index in range(7):
      writer.write(str(index).encode())
  assert shards.count_records(path) == 7
  data = pathlib.Path(path).read_bytes()
  pathlib.Path(path).write_bytes(data[:-3])
  with pytest.raises(tf.errors.DataLossError):
    shards.count_records(path)


def test_setup_errors_say_what_to_do(small_voc, tmp_path):
  root, _ = small_voc
  with pytest.raises(conversion.JobFailed) as failure:
    _run(root, tmp_path / "out", "--splits=train,train_aug")
  assert "no list for split 'train_aug'" in str(failure.value)
  assert "available splits: train, trainval, val" in str(failure.value)

  with pytest.raises(app.UsageError, match="--num_shard=3"):
    _run(root, tmp_path / "out", "--num_shard=3")
  assert not (tmp_path / "out").exists()  # nothing was started


def _tar_of(root: pathlib.Path) -> bytes:
  """root packed as the official archive lays it out (VOCdevkit/VOC2012/...)."""
  buffer = io.BytesIO()
  with tarfile.open(fileobj=buffer, mode="w") as tar:
    tar.add(root, arcname="VOCdevkit/VOC2012")
  return buffer.getvalue()


def test_a_missing_voc_root_is_downloaded_verified_and_converted(small_voc, tmp_path):
  root, splits = small_voc
  archive = _tar_of(root)
  with ArchiveServer() as server:
    url = server.add("/voc.tar", body=archive)
    summaries = _run(
      tmp_path / "VOC2012",
      tmp_path / "out",
      "--splits=val",
      f"--voc_url={url}",
      f"--voc_md5={hashlib.md5(archive).hexdigest()}",
    )
    assert summaries["val"].written == len(splits["val"])
    assert (tmp_path / "VOC2012" / "JPEGImages").is_dir()
    _run(tmp_path / "VOC2012", tmp_path / "out2", "--splits=val", f"--voc_url={url}")
    assert len(server.requests) == 1  # the second run finds the folder and does not download

    server.add("/missing.tar", status=404)
    with pytest.raises(conversion.JobFailed) as failure:
      _run(tmp_path / "elsewhere", tmp_path / "out3", f"--voc_url={server.url('/missing.tar')}")
  assert failure.value.exit_code == conversion.EXIT_SETUP
  assert str(failure.value).startswith("download failed:") and "404" in str(failure.value)
  assert "\n" not in str(failure.value)
