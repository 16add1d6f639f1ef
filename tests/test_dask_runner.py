"""The conversion on Beam's Dask runner, on a local dask.distributed cluster (2 worker processes on 127.0.0.1):
run as a user would (`python -m preprocessing.make_tfrecords --runner=DaskRunner --dask_client_address=...`), it
writes the same records, rejections and counts as the DirectRunner."""

import json
import os
import pathlib
import subprocess
import sys

from absl import app
from apache_beam.options.pipeline_options import StandardOptions
import distributed
import pytest
import tensorflow as tf

from contracts import schema
from contracts import shards
from preprocessing import conversion
from preprocessing import make_tfrecords
from preprocessing import pairs
from preprocessing import synthetic_voc

pytestmark = pytest.mark.timeout(600)  # a cluster that hangs must fail, not stall the suite

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SPLITS = ("train", "val")
DASK_RUNNER = "apache_beam.runners.dask.dask_runner.DaskRunner"


@pytest.fixture(scope="module")
def dask_cluster():
  with distributed.LocalCluster(
    n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
  ) as cluster:
    yield cluster


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory) -> pathlib.Path:
  """6 good train pairs, one listed id without files and one listed twice; 3 val pairs."""
  root = tmp_path_factory.mktemp("dask_voc")
  splits = synthetic_voc.write_dataset(str(root), num_train=6, num_val=3, height=32, width=40, seed=5)
  synthetic_voc.write_split_list(str(root), "train", splits["train"] + ["not_there", splits["train"][2]])
  return root


def _flags(voc_root: pathlib.Path, output_dir: pathlib.Path) -> list[str]:
  return [
    f"--voc_root={voc_root}",
    f"--output_dir={output_dir}",
    f"--splits={','.join(SPLITS)}",
    "--num_shards=2",
    "--max_rejected_fraction=1",
  ]


@pytest.fixture(scope="module")
def direct_run(voc_root, tmp_path_factory):
  output_dir = tmp_path_factory.mktemp("direct_tfrecords")
  return output_dir, make_tfrecords.run(["make_tfrecords", *_flags(voc_root, output_dir)])


@pytest.fixture(scope="module")
def dask_run(voc_root, dask_cluster, tmp_path_factory):
  output_dir = tmp_path_factory.mktemp("dask_tfrecords")
  process = subprocess.run(
    [
      sys.executable,
      "-m",
      "preprocessing.make_tfrecords",
      *_flags(voc_root, output_dir),
      "--runner=DaskRunner",
      f"--dask_client_address={dask_cluster.scheduler_address}",
      "--dask_npartitions=2",
    ],
    cwd=REPO_ROOT,
    env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert process.returncode == 0, process.stderr
  return output_dir, process


def _examples(output_dir: pathlib.Path, split: str) -> dict[str, tf.train.Example]:
  """{image id: Example} of every record of a split, whatever shard it is in."""
  examples = {}
  for record in tf.data.TFRecordDataset(sorted(tf.io.gfile.glob(shards.shard_pattern(str(output_dir), split)))):
    example = tf.train.Example.FromString(record.numpy())
    image_id = example.features.feature[schema.IMAGE_FILENAME].bytes_list.value[0].decode()
    assert image_id not in examples, f"{image_id} written twice"
    examples[image_id] = example
  return examples


def _summary(output_dir: pathlib.Path, split: str) -> dict:
  """summary.json without how the records fell into the shards (each runner deals them out its own way)."""
  summary = json.loads((output_dir / f"{split}-summary.json").read_text())
  shards = summary.pop("shards")
  assert sum(shard["records"] for shard in shards) == summary["written"]
  return summary | {"shard_files": [shard["file"] for shard in shards]}


def test_dask_runner_writes_the_direct_runners_records(direct_run, dask_run):
  (direct_dir, direct_summaries), (dask_dir, _) = direct_run, dask_run
  for split in SPLITS:
    direct, dask = _examples(direct_dir, split), _examples(dask_dir, split)
    assert sorted(dask) == sorted(direct) and len(direct) == direct_summaries[split].written > 0
    for image_id, example in direct.items():
      assert dask[image_id] == example, image_id  # every feature, byte for byte
    assert (dask_dir / f"{split}-rejected.jsonl").read_text() == (direct_dir / f"{split}-rejected.jsonl").read_text()
    assert _summary(dask_dir, split) == _summary(direct_dir, split)
    assert _summary(dask_dir, split)["verified"]
  assert direct_summaries["train"].rejected_by_reason == {pairs.DUPLICATE_ID: 1, pairs.MISSING_IMAGE: 1}
  assert sorted(os.listdir(dask_dir)) == sorted(os.listdir(direct_dir))  # no temp folders left


def test_dask_run_says_counters_are_unavailable_and_prints_the_summaries(dask_run):
  _, process = dask_run
  assert "Traceback" not in process.stderr
  assert "Beam counters are unavailable on DaskRunner" in process.stderr
  assert "verified by reading the written shards back" in process.stderr
  assert "Beam counters make_tfrecords/" not in process.stdout
  assert "train: 8 listed, 6 written in 2 shard(s), 2 rejected (duplicate_id 1, missing_image 1)" in process.stdout
  assert "val: 3 listed, 3 written in 2 shard(s), 0 rejected" in process.stdout


@pytest.mark.parametrize("runner", ["DaskRunner", "dask", DASK_RUNNER])
def test_a_runner_outside_beams_registry_gets_its_options(runner):
  options = conversion._pipeline_options([f"--runner={runner}", "--dask_client_address=tcp://127.0.0.1:1"])
  assert options.view_as(StandardOptions).runner == DASK_RUNNER
  assert options.get_all_options()["address"] == "tcp://127.0.0.1:1"


def test_beams_own_runner_names_are_kept():
  options = conversion._pipeline_options(["--direct_running_mode=in_memory"])
  assert options.view_as(StandardOptions).runner == "DirectRunner"
  options = conversion._pipeline_options(["--runner=DataflowRunner", "--project=p"])
  assert options.view_as(StandardOptions).runner == "DataflowRunner"


@pytest.mark.parametrize(
  "flag, message",
  [
    (
      "--dask_client_adress=tcp://127.0.0.1:1",
      "unknown flag(s) --dask_client_adress=tcp://127.0.0.1:1: neither a flag of this job nor a pipeline option of "
      "Beam or of --runner=DaskRunner",
    ),
    ("--runner=NoSuchRunner", "unknown --runner=NoSuchRunner: neither one of Beam's runners"),
  ],
)
def test_an_unknown_runner_option_or_runner_is_refused_with_one_line(voc_root, tmp_path, flag, message):
  with pytest.raises(app.UsageError) as refused:
    make_tfrecords.run(["make_tfrecords", *_flags(voc_root, tmp_path / "out"), "--runner=DaskRunner", flag])
  assert str(refused.value).startswith(message) and "\n" not in str(refused.value)
  assert refused.value.exitcode == conversion.EXIT_USAGE
  assert not (tmp_path / "out").exists()  # nothing was started


def test_a_runner_whose_extra_is_missing_is_named_with_one_line(monkeypatch):
  for module in [name for name in sys.modules if name.startswith("apache_beam.runners.dask.")]:
    monkeypatch.delitem(sys.modules, module)  # imported anew (and restored afterwards)
  monkeypatch.setitem(sys.modules, "dask.bag", None)  # as if dask were not installed
  with pytest.raises(conversion.JobFailed) as failure:
    conversion._pipeline_options(["--runner=DaskRunner"])
  assert str(failure.value).startswith("--runner=DaskRunner needs the 'dask.bag' package, which is not installed")
  assert failure.value.exit_code == conversion.EXIT_SETUP and "\n" not in str(failure.value)
