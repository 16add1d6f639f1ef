"""The Beam pipeline of the conversion: per split, pairs -> ConvertPairs -> TFRecord shards + rejected.jsonl +
the split's class pixel counts (summed by a CombineGlobally).

All splits go into one pipeline (one start-up). The DoFn is a thin shell around `pairs.convert_pair`; it counts
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
import numpy as np  # noqa: E402

from contracts import console  # noqa: E402
from contracts import shards  # noqa: E402
from preprocessing import mask_encoding  # noqa: E402
from preprocessing import pairs  # noqa: E402
from preprocessing import sources  # noqa: E402

_log = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 5.0
READ, WRITTEN, REJECTED = "read", "written", "rejected"
# ConvertPairs' outputs: (RECORD, serialized Example) and (PIXELS, its pixel counts), or (REJECTED, a
# rejected.jsonl line).
RECORD, PIXELS = "record", "pixels"


def metrics_namespace(split: str) -> str:
  return f"make_tfrecords/{split}"


def rejected_counter_name(reason: str) -> str:
  return f"{REJECTED}.{reason}"


_Rejection = pairs.Rejection  # In SplitPlan's body its field `pairs` hides the module (to mypy).


@dataclasses.dataclass(frozen=True)
class SplitPlan:
  """One split's work, decided before the pipeline starts (from its layout's listing)."""

  split: str
  pairs: tuple[sources.PairFiles, ...]  # distinct ids, listing order
  refused: tuple[_Rejection, ...]  # rejected before conversion: repeated ids, unreadable list lines
  num_shards: int

  @property
  def listed(self) -> int:
    return len(self.pairs) + len(self.refused)


_progress_lock = threading.Lock()
_progress_by_run_and_split: dict[tuple[str, str], console.Progress] = {}


def _split_progress(run_id: str, split: str, total: int) -> console.Progress:
  """One progress line per split in this process, shared by the DoFn instances of its threads, logged every few
  seconds. On a multi-worker runner each worker reports its own share; the total is the split's."""
  with _progress_lock:
    key = (run_id, split)
    if key not in _progress_by_run_and_split:
      _progress_by_run_and_split[key] = console.Progress(
        split, total, unit="pairs", every_seconds=PROGRESS_INTERVAL_S, write=_log.info
      )
    return _progress_by_run_and_split[key]


class ConvertPairs(beam.DoFn):
  """PairFiles -> (RECORD, serialized tf.train.Example) and (PIXELS, counts), or (REJECTED, a rejected.jsonl line)."""

  def __init__(self, encoding: mask_encoding.MaskEncoding, split: str, total: int):
    super().__init__()
    self.encoding, self.split, self.total = encoding, split, total
    self.run_id = uuid.uuid4().hex  # made once, when the pipeline is built: shared by all copies of this DoFn
    namespace = metrics_namespace(split)
    self._read = beam.metrics.Metrics.counter(namespace, READ)
    self._written = beam.metrics.Metrics.counter(namespace, WRITTEN)
    self._rejected = beam.metrics.Metrics.counter(namespace, REJECTED)

  def setup(self):
    self._progress = _split_progress(self.run_id, self.split, self.total)

  def process(self, pair: sources.PairFiles):
    self._read.inc()
    result = pairs.convert_pair(pair, self.encoding)
    self._progress.add()
    if isinstance(result, pairs.Rejection):
      self._rejected.inc()
      beam.metrics.Metrics.counter(metrics_namespace(self.split), rejected_counter_name(result.reason)).inc()
      yield REJECTED, json.dumps(result.to_json_dict(self.split))
    else:
      self._written.inc()
      yield RECORD, result.record
      yield PIXELS, result.pixel_counts


def _of_kind(output: tuple[str, bytes | str], kind: str):
  if output[0] == kind:
    yield output[1]


def _refuse(rejection: pairs.Rejection, split: str) -> str:
  namespace = metrics_namespace(split)
  beam.metrics.Metrics.counter(namespace, REJECTED).inc()
  beam.metrics.Metrics.counter(namespace, rejected_counter_name(rejection.reason)).inc()
  return json.dumps(rejection.to_json_dict(split))


def _sum_counts(counts) -> np.ndarray:
  return sum(counts, np.zeros(pairs.COUNTS_LENGTH, np.int64))


def _counts_line(counts: np.ndarray) -> str:
  return json.dumps([int(n) for n in counts])


def add_split(
  p: beam.Pipeline, plan: SplitPlan, *, encoding: mask_encoding.MaskEncoding, output_dir: str
) -> tuple[beam.PCollection, ...]:
  """Adds one split's branch: convert every pair, write the records, the rejections and the summed pixel counts;
  returns the writes' files."""
  split = plan.split
  converted = (
    p
    | f"{split}/ListPairs" >> beam.Create(plan.pairs)  # reshuffles: a distributed runner fans the pairs out
    | f"{split}/Convert" >> beam.ParDo(ConvertPairs(encoding, split, len(plan.pairs)))
  )
  records = converted | f"{split}/Records" >> beam.FlatMap(_of_kind, RECORD)
  rejected = converted | f"{split}/Rejections" >> beam.FlatMap(_of_kind, REJECTED)
  pixel_files = (
    converted
    | f"{split}/PixelCounts" >> beam.FlatMap(_of_kind, PIXELS)
    | f"{split}/SumPixelCounts" >> beam.CombineGlobally(_sum_counts).without_defaults()
    | f"{split}/PixelCountsLine" >> beam.Map(_counts_line)
    | f"{split}/WritePixelCounts"
    >> beam.io.WriteToText(
      shards.pixel_counts_prefix(output_dir, split),
      file_name_suffix=shards.PIXEL_COUNTS_SUFFIX,
      num_shards=1,
      shard_name_template="",
    )
  )
  record_files = records | f"{split}/WriteRecords" >> beam.io.WriteToTFRecord(
    shards.shard_prefix(output_dir, split),
    file_name_suffix=shards.SHARD_SUFFIX,
    num_shards=plan.num_shards,
    shard_name_template=shards.SHARD_NAME_TEMPLATE,
  )
  refused = p | f"{split}/ListRefused" >> beam.Create(plan.refused) | f"{split}/Refuse" >> beam.Map(_refuse, split)
  rejected_files = (
    (rejected, refused)
    | f"{split}/AllRejected" >> beam.Flatten()
    | f"{split}/WriteRejected"
    >> beam.io.WriteToText(
      shards.rejected_prefix(output_dir, split),
      file_name_suffix=shards.REJECTED_SUFFIX,
      num_shards=1,
      shard_name_template="",
    )
  )
  return record_files, rejected_files, pixel_files


def build(p: beam.Pipeline, plans: list[SplitPlan], *, encoding: mask_encoding.MaskEncoding, output_dir: str) -> None:
  files = [pcoll for plan in plans for pcoll in add_split(p, plan, encoding=encoding, output_dir=output_dir)]
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
