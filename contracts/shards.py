"""What a conversion leaves in its output folder, and how the later stages find it (local or gs://).

{split}-00000-of-000NN.tfrecord   the records (NN = shard count; contracts/schema.py's schema)
{split}-rejected.jsonl            one JSON line per rejected id: {"id", "split", "reason", "detail"}
{split}-summary.json              counts, shard files and their verified record counts, pixels per class
class_names.txt                   (one per data set) the class names, background first, one per line:
                                  what training, evaluation, pictures and exports name the classes by
class_colours.txt                 (where the data set's colour table gave them) each class's colour, `r g b`
                                  per line in class-id order: what pictures draw the classes in (else VOC's)
"""

import json
import math

import numpy as np

from contracts import errors
from contracts import quiet_imports

quiet_imports.import_quietly()
import tensorflow as tf  # noqa: E402

RECORDS_PER_SHARD = 1000  # ~100 MB shards for VOC-sized JPEGs (TF's guidance: 100-200 MB per file)
SHARD_SUFFIX = ".tfrecord"
SHARD_NAME_TEMPLATE = "-SSSSS-of-NNNNN"  # Beam's template: deterministic names, e.g. train-00000-of-00003
REJECTED_SUFFIX = ".jsonl"
CLASS_NAMES_FILE = "class_names.txt"  # Also where a VOC-layout root keeps its own classes' names.
CLASS_COLOURS_FILE = "class_colours.txt"
PIXEL_COUNTS_SUFFIX = ".json"  # {split}-pixels.json: the conversion's summed counts, folded into the summary


class DataError(errors.UserError, ValueError):
  """A data folder does not hold what was asked for (reported to the user in one line)."""


def default_num_shards(num_records: int) -> int:
  return max(1, math.ceil(num_records / RECORDS_PER_SHARD))


def shard_prefix(output_dir: str, split: str) -> str:
  return tf.io.gfile.join(output_dir, split)


def shard_paths(output_dir: str, split: str, num_shards: int) -> list[str]:
  return [f"{shard_prefix(output_dir, split)}-{i:05d}-of-{num_shards:05d}{SHARD_SUFFIX}" for i in range(num_shards)]


def shard_pattern(output_dir: str, split: str) -> str:
  """A glob for the split's shards, whatever their count (what readers of the split use)."""
  return f"{shard_prefix(output_dir, split)}-?????-of-?????{SHARD_SUFFIX}"


def rejected_prefix(output_dir: str, split: str) -> str:
  return tf.io.gfile.join(output_dir, f"{split}-rejected")


def rejected_path(output_dir: str, split: str) -> str:
  return rejected_prefix(output_dir, split) + REJECTED_SUFFIX


def pixel_counts_prefix(output_dir: str, split: str) -> str:
  return tf.io.gfile.join(output_dir, f"{split}-pixels")


def pixel_counts_path(output_dir: str, split: str) -> str:
  return pixel_counts_prefix(output_dir, split) + PIXEL_COUNTS_SUFFIX


def summary_path(output_dir: str, split: str) -> str:
  return tf.io.gfile.join(output_dir, f"{split}-summary.json")


def split_files(data_dir: str, split: str) -> str:
  """The glob readers take for a split's records ({split}-*.tfrecord: ours, and shards named otherwise, as
  research/deeplab's); raises DataError naming the splits there are when none match."""
  pattern = tf.io.gfile.join(data_dir, f"{split}-*{SHARD_SUFFIX}")
  if not tf.io.gfile.glob(pattern):
    found = sorted(
      {
        path.rsplit("/", 1)[-1].split("-")[0]
        for path in tf.io.gfile.glob(tf.io.gfile.join(data_dir, "*" + SHARD_SUFFIX))
      }
    )
    hint = f"splits found: {', '.join(found)}" if found else f"no {SHARD_SUFFIX} files at all"
    raise DataError(
      f"no shards for split {split!r} in {data_dir} ({hint}); make them with python -m preprocessing.make_tfrecords"
    )
  return pattern


def count_records(path: str) -> int:
  """Records in one TFRecord file or glob (CRC-checked; a damaged file raises tf.errors.DataLossError)."""
  files = tf.io.gfile.glob(path) if any(c in path for c in "*?[") else [path]
  dataset = tf.data.TFRecordDataset(files, buffer_size=8 << 20)
  return int(dataset.reduce(np.int64(0), lambda count, _: count + 1))


def count_examples(data_dir: str, split: str) -> int:
  """A split's records: from the conversion's summary when there is one, else by reading the shards once."""
  written = (read_summary(data_dir, split) or {}).get("written")
  if written:
    return int(written)
  return count_records(tf.io.gfile.join(data_dir, f"{split}-*{SHARD_SUFFIX}"))


def read_summary(data_dir: str, split: str) -> dict | None:
  """A split's {split}-summary.json (counts, pixels per class), or None when the conversion left none."""
  path = summary_path(data_dir, split)
  if not tf.io.gfile.exists(path):
    return None
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)


def class_names_path(folder: str) -> str:
  return tf.io.gfile.join(folder, CLASS_NAMES_FILE)


def read_class_names(path: str) -> tuple[str, ...] | None:
  """The names in a class-names file (one per line, blank lines skipped), or None when there is no such file."""
  if not tf.io.gfile.exists(path):
    return None
  with tf.io.gfile.GFile(path) as f:
    return tuple(line.strip() for line in f.read().splitlines() if line.strip())


def write_class_names(folder: str, names) -> None:
  with tf.io.gfile.GFile(class_names_path(folder), "w") as f:
    f.write("".join(f"{name}\n" for name in names))


def class_colours_path(folder: str) -> str:
  return tf.io.gfile.join(folder, CLASS_COLOURS_FILE)


def read_class_colours(path: str) -> tuple[tuple[int, int, int], ...] | None:
  """The colours of a class-colours file (`r g b` per line), or None when there is no such file."""
  if not tf.io.gfile.exists(path):
    return None
  with tf.io.gfile.GFile(path) as f:
    rows = [line.split() for line in f.read().splitlines() if line.strip()]
  if any(len(row) != 3 or not all(v.isdigit() and int(v) < 256 for v in row) for row in rows):
    raise DataError(f"{path}: expected `r g b` (0..255) on every line")
  return tuple((int(r), int(g), int(b)) for r, g, b in rows)


def write_class_colours(folder: str, colours) -> None:
  with tf.io.gfile.GFile(class_colours_path(folder), "w") as f:
    f.write("".join(f"{r} {g} {b}\n" for r, g, b in colours))
