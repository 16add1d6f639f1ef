"""The Beam pipeline of the conversion: per split, ids -> ConvertPairs -> TFRecord shards + rejected.jsonl.

All splits go into one pipeline (one start-up). The DoFn is a thin shell around `pairs.convert`; it counts
read / written / rejected-by-reason with Beam Metrics and logs a progress line every few seconds.

The pipeline keeps to what every runner runs alike, Beam's Dask runner (2.77) included: single-output ParDos
(that runner hands all the outputs of a multi-output ParDo to each consumer, whatever their tag) and one final
transform that depends on every write (it runs only the dask graph of the pipeline's last transform).
"""

import dataclasses
import json
import logging
import threading
import uuid

from contracts import quiet_imports

quiet_imports.import_quietly("apache_beam")
import apache_beam as beam  # noqa: E402
from apache_beam.metrics.metric import MetricsFilter  # noqa: E402

from contracts import console  # noqa: E402
from contracts import shards
from preprocessing import pairs

_log = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 5.0
READ, WRITTEN, REJECTED = "read", "written", "rejected"
RECORD = "record"  # ConvertPairs' outputs are (RECORD, serialized Example) or (REJECTED, rejected.jsonl line)


def metrics_namespace(split: str) -> str:
  return f"make_tfrecords/{split}"


def rejected_counter_name(reason: str) -> str:
  return f"{REJECTED}.{reason}"


@dataclasses.dataclass(frozen=True)
class SplitPlan:
  """One split's work, decided before the pipeline starts (from its ImageSets list)."""
  split: str
  ids: tuple[str, ...]  # distinct ids, list order
  repeats: tuple[str, ...]  # later occurrences of listed-twice ids: rejected as duplicate_id
  num_shards: int

  @property
  def listed(self) -> int:
    return len(self.ids) + len(self.repeats)


_progress_lock = threading.Lock()
_progress_by_run_and_split: dict[tuple[str, str], console.Progress] = {}


def _split_progress(run_id: str, split: str, total: int) -> console.Progress:
  """One progress line per split in this process, shared by the DoFn instances of its threads, logged every few
  seconds. On a multi-worker runner each worker reports its own share; the total is the split's."""
  with _progress_lock:
    key = (run_id, split)
    if key not in _progress_by_run_and_split:
      _progress_by_run_and_split[key] = console.Progress(split, total, unit="pairs", every_seconds=PROGRESS_INTERVAL_S,
                                                         write=_log.info)
    return _progress_by_run_and_split[key]


class ConvertPairs(beam.DoFn):
  """id -> (RECORD, serialized tf.train.Example) or (REJECTED, its rejected.jsonl line)."""

  def __init__(self, voc_root: str, split: str, num_classes: int, total: int):
    super().__init__()
    self.voc_root, self.split, self.num_classes, self.total = voc_root, split, num_classes, total
    self.run_id = uuid.uuid4().hex  # made once, when the pipeline is built: shared by all copies of this DoFn
    namespace = metrics_namespace(split)
    self._read = beam.metrics.Metrics.counter(namespace, READ)
    self._written = beam.metrics.Metrics.counter(namespace, WRITTEN)
    self._rejected = beam.metrics.Metrics.counter(namespace, REJECTED)

  def setup(self):
    self._progress = _split_progress(self.run_id, self.split, self.total)

  def process(self, image_id: str):
    self._read.inc()
    result = pairs.convert(self.voc_root, image_id, self.num_classes)
    self._progress.add()
    if isinstance(result, pairs.Rejection):
      self._rejected.inc()
      beam.metrics.Metrics.counter(metrics_namespace(self.split), rejected_counter_name(result.reason)).inc()
      yield REJECTED, json.dumps(result.to_json_dict(self.split))
    else:
      self._written.inc()
      yield RECORD, result


def _of_kind(output: tuple[str, bytes | str], kind: str):
  if output[0] == kind:
    yield output[1]


def _reject_repeat(image_id: str, split: str) -> str:
  namespace = metrics_namespace(split)
  beam.metrics.Metrics.counter(namespace, REJECTED).inc()
  beam.metrics.Metrics.counter(namespace, rejected_counter_name(pairs.DUPLICATE_ID)).inc()
  return json.dumps(pairs.duplicate_rejection(image_id).to_json_dict(split))


def add_split(p: beam.Pipeline, plan: SplitPlan, *, voc_root: str, output_dir: str,
              num_classes: int) -> tuple[beam.PCollection, beam.PCollection]:
  """Adds one split's branch: convert every id, write the records and the rejections; returns the writes' files."""
  split = plan.split
  converted = (
      p
      | f"{split}/ListIds" >> beam.Create(plan.ids)  # reshuffles: a distributed runner fans the ids out
      | f"{split}/Convert" >> beam.ParDo(ConvertPairs(voc_root, split, num_classes, len(plan.ids))))
  records = converted | f"{split}/Records" >> beam.FlatMap(_of_kind, RECORD)
  rejected = converted | f"{split}/Rejections" >> beam.FlatMap(_of_kind, REJECTED)
  record_files = records | f"{split}/WriteRecords" >> beam.io.WriteToTFRecord(
      shards.shard_prefix(output_dir, split), file_name_suffix=shards.SHARD_SUFFIX,
      num_shards=plan.num_shards, shard_name_template=shards.SHARD_NAME_TEMPLATE)
  repeats = (
      p
      | f"{split}/ListRepeats" >> beam.Create(plan.repeats)
      | f"{split}/RejectRepeats" >> beam.Map(_reject_repeat, split))
  rejected_files = (
      (rejected, repeats)
      | f"{split}/AllRejected" >> beam.Flatten()
      | f"{split}/WriteRejected" >> beam.io.WriteToText(
          shards.rejected_prefix(output_dir, split), file_name_suffix=shards.REJECTED_SUFFIX,
          num_shards=1, shard_name_template=""))
  return record_files, rejected_files


def build(p: beam.Pipeline, plans: list[SplitPlan], *, voc_root: str, output_dir: str, num_classes: int) -> None:
  files = [pcoll for plan in plans
           for pcoll in add_split(p, plan, voc_root=voc_root, output_dir=output_dir, num_classes=num_classes)]
  # The last transform depends on every write: a runner that computes only what the last one needs still runs
  # all of them (the Dask runner); elsewhere it is a Flatten of a few file names.
  _ = files | "AllWritten" >> beam.Flatten()


def counters(result: beam.runners.runner.PipelineResult, split: str) -> dict[str, int] | None:
  """The split's counters by name (committed values where the runner has them, else attempted).

  None on a runner whose results have no metrics (PipelineResult.metrics raises NotImplementedError, as the
  Dask runner's does).
  """
  try:
    results = result.metrics()
  except NotImplementedError:
    return None
  found = results.query(MetricsFilter().with_namespace(metrics_namespace(split)))["counters"]
  values: dict[str, int] = {}
  for metric in found:
    value = metric.committed if metric.committed is not None else metric.attempted
    name = metric.key.metric.name
    values[name] = values.get(name, 0) + int(value or 0)  # summed over steps (rejected comes from two)
  return values
