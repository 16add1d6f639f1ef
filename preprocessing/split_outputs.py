"""The checks made on what one split's conversion left in output_dir (contracts/shards.py names the files),
after the pipeline has run.

The record count is verified by reading back the shards actually written: a runner can lose records without
an error (seen with DirectRunner's multi_threading mode and WriteToTFRecord).
"""

import dataclasses
import json
import re

import tensorflow as tf

from contracts import shards
from contracts import voc
from preprocessing import pairs


def read_rejected(output_dir: str, split: str) -> list[dict]:
  path = shards.rejected_path(output_dir, split)
  if not tf.io.gfile.exists(path):
    return []
  with tf.io.gfile.GFile(path, "r") as f:
    return [json.loads(line) for line in f.read().splitlines() if line.strip()]


def rewrite_rejected_sorted(output_dir: str, split: str, rejected: list[dict]) -> list[dict]:
  """Rewrites rejected.jsonl in (id, reason) order: the runner writes it in arbitrary order, people diff it."""
  ordered = sorted(rejected, key=lambda r: (r["id"], r["reason"], r.get("detail", "")))
  if ordered != rejected:
    with tf.io.gfile.GFile(shards.rejected_path(output_dir, split), "w") as f:
      f.write("".join(json.dumps(r) + "\n" for r in ordered))
  return ordered


def stale_shards(output_dir: str, split: str, num_shards: int) -> list[str]:
  """Shards of this split with another shard count, left by an earlier run (a glob would mix them in)."""
  current = {p.rsplit("/", 1)[-1] for p in shards.shard_paths(output_dir, split, num_shards)}
  name = re.compile(re.escape(split) + r"-\d{5}-of-\d{5}" + re.escape(shards.SHARD_SUFFIX) + "$")
  return sorted(
    path
    for path in tf.io.gfile.glob(shards.shard_pattern(output_dir, split))
    if name.match(path.rsplit("/", 1)[-1]) and path.rsplit("/", 1)[-1] not in current
  )


def leftover_temp_dirs(output_dir: str, split: str) -> list[str]:
  """Beam's temp folders of this split's writes still in output_dir (beam-temp-{split}[-rejected|-pixels]-<uuid>).

  A write removes its own at the end; one is left by a crashed run, or by a runner that initialises a write
  more than once (Beam 2.77's Dask runner computes a side input anew wherever it is read: a write leaves up to
  three, one of them holding a second copy of its files).
  """
  name = re.compile("beam-temp-" + re.escape(split) + r"(-rejected|-pixels)?-[0-9a-f]{32}$")
  found = (path.rstrip("/") for path in tf.io.gfile.glob(tf.io.gfile.join(output_dir, f"beam-temp-{split}-*")))
  return sorted(path for path in found if name.match(path.rsplit("/", 1)[-1]) and tf.io.gfile.isdir(path))


@dataclasses.dataclass
class SplitSummary:
  """What {split}-summary.json holds. `written` counts records read back from the shards."""

  split: str
  listed: int  # lines in the split list, repeats included
  read: int  # distinct ids the converter processed
  expected_written: int  # records the converter handed to the writer
  written: int  # records found in the shard files
  rejected: int
  rejected_by_reason: dict[str, int]
  num_shards: int
  shards: list[dict]  # [{"file": name, "records": n}]
  rejected_file: str
  verified: bool  # written == expected_written and every shard was readable
  problems: list[str]  # what failed verification, one line each
  class_pixels: dict[str, int] = dataclasses.field(default_factory=dict)  # labelled pixels of the written pairs
  class_image_pixels: dict[str, int] = dataclasses.field(default_factory=dict)  # of the pairs holding the class
  void_pixels: int = 0  # never scored; unknown_to_void_pixels of them were values outside the encoding
  unknown_to_void_pixels: int = 0
  masks_without_image: int | None = None  # masks the layout found that no image names (None: cannot tell)
  masks_without_image_examples: list[str] = dataclasses.field(default_factory=list)

  @property
  def rejected_fraction(self) -> float:
    return self.rejected / self.listed if self.listed else 0.0

  def to_json(self) -> str:
    return (
      json.dumps(dataclasses.asdict(self) | {"rejected_fraction": round(self.rejected_fraction, 6)}, indent=2) + "\n"
    )


def read_pixel_counts(output_dir: str, split: str) -> list[int] | None:
  """The pipeline's summed pixel counts (pairs.COUNTS_LENGTH values), None when it wrote none."""
  path = shards.pixel_counts_path(output_dir, split)
  if not tf.io.gfile.exists(path):
    return None
  with tf.io.gfile.GFile(path) as f:
    lines = [line for line in f.read().splitlines() if line.strip()]
  return json.loads(lines[0]) if lines else None


def verify_and_summarise(
  *,
  output_dir: str,
  split: str,
  num_shards: int,
  listed: int,
  distinct: int,
  read: int | None,
  expected_written: int | None,
  expected_rejected: int | None,
  class_names: tuple[str, ...] = (),
  masks_without_image: tuple[str, ...] | None = None,
) -> SplitSummary:
  """Counts what was written for a split against what the pipeline meant to write; writes summary.json (with
  the pixels of each class, folded in from the pipeline's {split}-pixels.json, which it then removes).

  read / expected_* come from the pipeline's counters; None (a runner without metrics) derives them from the
  input and rejected.jsonl instead, which still catches lost records. `listed - distinct` pairs were refused
  before conversion (repeated ids, unreadable list lines) and are among the rejected.
  """
  problems: list[str] = []
  shard_counts: list[dict[str, str | int]] = []  # {"file": its name, "records": how many it holds}
  written = 0
  for path in shards.shard_paths(output_dir, split, num_shards):
    name = path.rsplit("/", 1)[-1]
    if not tf.io.gfile.exists(path):
      problems.append(f"shard {name} is missing")
      continue
    try:
      records = shards.count_records(path)
      shard_counts.append({"file": name, "records": records})
      written += records
    except tf.errors.OpError as e:
      problems.append(f"shard {name} is unreadable ({type(e).__name__}: {e.message[:200]})")
  rejected = rewrite_rejected_sorted(output_dir, split, read_rejected(output_dir, split))
  repeats = listed - distinct
  if read is None:
    read = distinct
  elif read != distinct:
    problems.append(f"the converter processed {read} ids, the list has {distinct} distinct ids")
  if expected_rejected is None:
    expected_rejected = len(rejected)
  if expected_written is None:
    expected_written = distinct - (expected_rejected - repeats)
  if written != expected_written:
    problems.append(f"{written} records in the shards, {expected_written} were sent to the writer")
  if len(rejected) != expected_rejected:
    problems.append(f"{len(rejected)} lines in {split}-rejected.jsonl, {expected_rejected} pairs were rejected")
  by_reason: dict[str, int] = {}
  for record in rejected:
    by_reason[record["reason"]] = by_reason.get(record["reason"], 0) + 1
  counts = read_pixel_counts(output_dir, split)
  if counts is None:
    counts = [0] * pairs.COUNTS_LENGTH
    if written:
      problems.append(f"no pixel counts in {shards.pixel_counts_path(output_dir, split).rsplit('/', 1)[-1]}")
  labelled = {index: n for index, n in enumerate(counts[: voc.IGNORE_LABEL]) if n or index < len(class_names)}
  summary = SplitSummary(
    split=split,
    listed=listed,
    read=read,
    expected_written=expected_written,
    written=written,
    rejected=len(rejected),
    rejected_by_reason=dict(sorted(by_reason.items())),
    num_shards=num_shards,
    shards=shard_counts,
    rejected_file=shards.rejected_path(output_dir, split).rsplit("/", 1)[-1],
    verified=not problems,
    problems=problems,
    class_pixels={(class_names[i] if i < len(class_names) else str(i)): n for i, n in labelled.items()},
    class_image_pixels={
      (class_names[i] if i < len(class_names) else str(i)): counts[pairs.IMAGE_PIXELS + i] for i in labelled
    },
    void_pixels=counts[voc.IGNORE_LABEL],
    unknown_to_void_pixels=counts[pairs.UNKNOWN_TO_VOID],
    masks_without_image=None if masks_without_image is None else len(masks_without_image),
    masks_without_image_examples=list(masks_without_image or ())[:10],
  )
  with tf.io.gfile.GFile(shards.summary_path(output_dir, split), "w") as f:
    f.write(summary.to_json())
  if tf.io.gfile.exists(shards.pixel_counts_path(output_dir, split)):
    tf.io.gfile.remove(shards.pixel_counts_path(output_dir, split))
  return summary
