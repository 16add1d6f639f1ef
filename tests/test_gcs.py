"""gs:// paths for every path flag, run as users run the commands, against a local GCS emulator (no mocks).

The conversion writes shards to a bucket (from a local and from a gs:// voc_root), training reads them and
writes checkpoints, TensorBoard events and metrics back, a second run resumes from the bucket's checkpoint, and
inference.evaluate reads the run from the bucket. TensorFlow's own GCS client, Beam's (google-cloud-storage)
and gcsfs all talk to the emulator (tests/gcs_emulator.py says how); nothing leaves the machine.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest
import tensorflow as tf

from contracts import schema
from preprocessing import synthetic_voc
from tests.gcs_emulator import GcsEmulator

pytestmark = pytest.mark.timeout(600)

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
BUCKET = "test-bucket"
NUM_TRAIN, NUM_VAL = 8, 4
# Hosts the commands try and may be refused without harm: Beam's DirectRunner first tries to download its
# Prism runner from GitHub, then runs in-process.
EXPECTED_REFUSALS = {"github.com"}


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
  with GcsEmulator.start(tmp_path_factory.mktemp("gcs"), bucket=BUCKET) as emulator:
    yield emulator
    assert emulator.refused_hosts() <= EXPECTED_REFUSALS, "a command tried to reach the internet"


@pytest.fixture(scope="module")
def local_voc(tmp_path_factory) -> tuple[pathlib.Path, dict[str, list[str]]]:
  root = tmp_path_factory.mktemp("voc")
  ids = synthetic_voc.write_dataset(str(root), num_train=NUM_TRAIN, num_val=NUM_VAL, height=64, width=80, seed=3)
  return root, ids


def run(gcs: GcsEmulator, module: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
  return subprocess.run(
    [sys.executable, "-m", module, *args],
    cwd=REPO_ROOT,
    env=os.environ | gcs.env(),
    capture_output=True,
    text=True,
    timeout=timeout,
  )


def convert(gcs: GcsEmulator, voc_root: str, output_dir: str) -> subprocess.CompletedProcess:
  result = run(gcs, "preprocessing.make_tfrecords", f"--voc_root={voc_root}", f"--output_dir={output_dir}")
  assert result.returncode == 0, result.stderr[-3000:]
  return result


def bucket_records(gcs: GcsEmulator, prefix: str, split: str, tmp_path: pathlib.Path) -> dict[str, tf.train.Example]:
  """{filename feature: example} of a split's shards in the bucket (read back with gcsfs)."""
  fs = gcs.filesystem()
  records = {}
  for shard in fs.glob(f"{BUCKET}/{prefix}/{split}-*.tfrecord"):
    local = tmp_path / shard.rsplit("/", 1)[-1]
    fs.get(shard, str(local))
    for record in tf.data.TFRecordDataset(str(local)):
      example = tf.train.Example.FromString(record.numpy())  # compared as messages: map order is not stable
      records[example.features.feature[schema.IMAGE_FILENAME].bytes_list.value[0].decode()] = example
  return records


@pytest.fixture(scope="module")
def converted(gcs, local_voc) -> str:
  """gs:// output_dir of the conversion of the local synthetic VOC set."""
  convert(gcs, str(local_voc[0]), f"gs://{BUCKET}/records")
  return f"gs://{BUCKET}/records"


def test_conversion_writes_shards_and_summaries_to_the_bucket(gcs, local_voc, converted, tmp_path):
  fs = gcs.filesystem()
  names = {path.rsplit("/", 1)[-1] for path in fs.ls(f"{BUCKET}/records")}
  assert {
    "train-00000-of-00001.tfrecord",
    "val-00000-of-00001.tfrecord",
    "train-summary.json",
    "val-summary.json",
    "train-rejected.jsonl",
    "val-rejected.jsonl",
  } <= names
  assert not any(name.startswith(".temp") or "beam-temp" in name for name in names), names  # Beam cleaned up
  for split, count in (("train", NUM_TRAIN), ("val", NUM_VAL)):
    summary = json.loads(fs.cat(f"{BUCKET}/records/{split}-summary.json"))
    assert (summary["verified"], summary["written"], summary["rejected"]) == (True, count, 0)
    assert sorted(bucket_records(gcs, "records", split, tmp_path)) == sorted(local_voc[1][split])


def test_conversion_reads_a_gs_voc_root(gcs, local_voc, converted, tmp_path):
  """The same pairs uploaded to the bucket give the same records as from the local folder."""
  fs = gcs.filesystem()
  fs.put(str(local_voc[0]), f"{BUCKET}/voc", recursive=True)
  convert(gcs, f"gs://{BUCKET}/voc", f"gs://{BUCKET}/records_from_gs")
  for split in ("train", "val"):
    assert bucket_records(gcs, "records_from_gs", split, tmp_path / "gs") == bucket_records(
      gcs, "records", split, tmp_path / "local"
    )


def test_downloading_voc_into_a_gs_root_is_refused_in_one_line(gcs):
  result = run(
    gcs, "preprocessing.make_tfrecords", f"--voc_root=gs://{BUCKET}/no_voc_here", f"--output_dir=gs://{BUCKET}/unused"
  )
  assert result.returncode == 1
  last_line = result.stderr.strip().splitlines()[-1]
  assert last_line.startswith("make_tfrecords: error: download failed") and "local folder" in last_line


TRAIN_FLAGS = (
  "--config=configs/smoke.py",
  "--config.model.alpha=0.35",
  "--config.input.crop_size=64",
  "--config.input.eval_pad_to=128",
  "--config.train.num_triptychs=1",
)


def test_training_on_the_bucket_checkpoints_resumes_and_evaluates(gcs, converted):
  fs = gcs.filesystem()
  model_dir = f"gs://{BUCKET}/runs/smoke"
  run_dir = f"{BUCKET}/runs/smoke"
  steps_per_loop = NUM_TRAIN // 4  # smoke's batch size

  first = run(
    gcs,
    "trainer.main",
    f"--data_dir={converted}",
    f"--model_dir={model_dir}",
    *TRAIN_FLAGS,
    "--config.train.epochs=1",
    "--mode=train",
  )
  assert first.returncode == 0, first.stderr[-3000:]
  assert fs.exists(f"{run_dir}/resume/chief/ckpt-1.index") and fs.exists(f"{run_dir}/checkpoints/final.weights.h5")
  assert json.loads(fs.cat(f"{run_dir}/config.json"))["train"]["epochs"] == 1

  second = run(
    gcs, "trainer.main", f"--data_dir={converted}", f"--model_dir={model_dir}", *TRAIN_FLAGS, "--config.train.epochs=2"
  )
  assert second.returncode == 0, second.stderr[-3000:]
  assert "resuming after loop 1 of 2" in second.stderr
  assert "Epoch 2/2" in second.stdout and "Epoch 1/2" not in second.stdout
  metrics = json.loads(fs.cat(f"{run_dir}/metrics.json"))
  assert metrics["steps"] == 2 * steps_per_loop  # one loop from each run, none repeated
  assert metrics["weights"] == f"{model_dir}/checkpoints/best.weights.h5"
  assert fs.exists(f"{run_dir}/resume/chief/ckpt-2.index")
  assert fs.glob(f"{run_dir}/events.out.tfevents.*"), "no TensorBoard events in the run's folder"

  evaluation = run(gcs, "inference.evaluate", f"--model_dir={model_dir}", f"--data_dir={converted}")
  assert evaluation.returncode == 0, evaluation.stderr[-3000:]
  report = json.loads(fs.cat(f"{run_dir}/eval_val.json"))
  assert report["weights"] == metrics["weights"] and 0.0 <= report["miou"] <= 1.0
  assert fs.cat(f"{run_dir}/eval_val_confusion.png").startswith(b"\x89PNG")
