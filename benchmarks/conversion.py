"""Conversion speed (pairs/s): the Beam job (DirectRunner, default mode) vs a plain sequential Python loop.

  .venv/bin/python benchmarks/conversion.py                 # the 512 real pairs of ../shared/data/voc_sample
  .venv/bin/python benchmarks/conversion.py --rounds=3 --json_out=/tmp/conversion.json

Both convert the same ids with the same validation and encoding (`preprocessing.pairs.convert`):
  beam job    `make_tfrecords.run` in this process: pipeline construction, runner start-up, conversion, writing
              shards + rejected.jsonl, then reading the shards back to verify the count and writing summaries.
  beam fixed  the same job on a 1-pair split: Beam's (and the verification's) fixed cost per run.
  loop        for each id: convert, then `tf.io.TFRecordWriter.write` into one file; nothing else.
Python/TensorFlow/Beam import time is paid by both and excluded. The three are measured in turns,
--rounds times, and the medians reported, so other load on the machine hits them alike.
"""

import json
import os
import pathlib
import statistics
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from contracts import quiet_imports

quiet_imports.import_quietly("apache_beam")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import tensorflow as tf  # noqa: E402

from contracts import voc  # noqa: E402
from preprocessing import conversion  # noqa: E402
from preprocessing import make_tfrecords  # noqa: E402
from preprocessing import pairs  # noqa: E402
from preprocessing import sources  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_VOC = pathlib.Path(os.environ.get("SEG_SHARED_DIR", REPO_ROOT.parent / "shared")) / "data" / "voc_sample"

flags.DEFINE_string("voc_dir", str(DEFAULT_VOC), "VOC2012-layout folder to convert.")
flags.DEFINE_string("split", "trainval", "The split converted (ImageSets/Segmentation/{split}.txt).")
flags.DEFINE_integer("rounds", 3, "Measurements of each, in turns; medians are reported.")
flags.DEFINE_string("json_out", None, "Also write the figures here as JSON.")
FLAGS = flags.FLAGS


def one_pair_root(voc_dir: pathlib.Path, split: str, work: pathlib.Path) -> pathlib.Path:
  """A VOC root with the same image and mask folders (symlinked) and a split of one id."""
  root = work / "one_pair_voc"
  (root / voc.SPLIT_DIR).mkdir(parents=True, exist_ok=True)
  for folder in (voc.IMAGE_DIR, voc.MASK_DIR):
    if not (root / folder).exists():
      (root / folder).symlink_to(voc_dir / folder)
  first_id = voc.read_split_ids(str(voc_dir), split)[0]
  (root / voc.SPLIT_DIR / f"{split}.txt").write_text(first_id + "\n")
  return root


def time_beam(voc_dir: pathlib.Path, split: str, output_dir: pathlib.Path) -> tuple[float, int]:
  start = time.perf_counter()
  summaries = make_tfrecords.run(
    ["conversion", f"--voc_root={voc_dir}", f"--output_dir={output_dir}", f"--splits={split}"]
  )
  return time.perf_counter() - start, summaries[split].written


def time_loop(voc_dir: pathlib.Path, split: str, output_dir: pathlib.Path) -> tuple[float, int]:
  ids = [pair.id for pair in sources.voc_pairs(str(voc_dir), split).pairs]
  output_dir.mkdir(parents=True, exist_ok=True)
  written = 0
  start = time.perf_counter()
  with tf.io.TFRecordWriter(str(output_dir / f"{split}-00000-of-00001.tfrecord")) as writer:
    for image_id in ids:
      record = pairs.convert(str(voc_dir), image_id)
      if isinstance(record, bytes):
        writer.write(record)
        written += 1
  return time.perf_counter() - start, written


def main(argv: list[str]) -> None:
  del argv
  voc_dir, split, rounds, json_out = pathlib.Path(FLAGS.voc_dir), FLAGS.split, FLAGS.rounds, FLAGS.json_out
  conversion.quiet_beam_logging()
  times: dict[str, list[float]] = {"beam job": [], "beam fixed (1 pair)": [], "loop": []}
  pairs_done = {}
  with tempfile.TemporaryDirectory() as work_dir:
    work = pathlib.Path(work_dir)
    tiny = one_pair_root(voc_dir, split, work)
    for round_index in range(rounds):
      seconds, pairs_done["beam job"] = time_beam(voc_dir, split, work / f"beam{round_index}")
      times["beam job"].append(seconds)
      seconds, pairs_done["beam fixed (1 pair)"] = time_beam(tiny, split, work / f"tiny{round_index}")
      times["beam fixed (1 pair)"].append(seconds)
      seconds, pairs_done["loop"] = time_loop(voc_dir, split, work / f"loop{round_index}")
      times["loop"].append(seconds)
      print(
        f"round {round_index + 1}/{rounds}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()), flush=True
      )

  median = {name: statistics.median(values) for name, values in times.items()}
  fixed = median["beam fixed (1 pair)"]
  rows = [
    ("beam job (with start-up + verify)", pairs_done["beam job"], median["beam job"]),
    ("beam job minus fixed cost", pairs_done["beam job"] - 1, median["beam job"] - fixed),
    ("sequential loop", pairs_done["loop"], median["loop"]),
  ]
  print(f"\n{split} of {voc_dir} on {os.cpu_count()} CPU(s), medians of {rounds} round(s)")
  print(f"{'':36s} {'pairs':>6s} {'seconds':>8s} {'pairs/s':>8s}")
  for name, count, seconds in rows:
    print(f"{name:36s} {count:6d} {seconds:8.2f} {count / seconds:8.1f}")
  print(f"{'beam fixed cost (1-pair job)':36s} {'':6s} {fixed:8.2f}")
  if json_out:
    figures = {
      "split": split,
      "voc_dir": str(voc_dir),
      "rounds": rounds,
      "cpus": os.cpu_count(),
      "seconds": times,
      "median_seconds": median,
      "pairs_per_second": {name: count / seconds for name, count, seconds in rows},
    }
    pathlib.Path(json_out).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
  app.run(main)
