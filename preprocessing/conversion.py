"""The conversion job: VOC-format data -> verified, sharded DeepLab TFRecords with Apache Beam (what
python -m preprocessing.make_tfrecords runs; its docstring says what it writes and its exit codes).
"""

import dataclasses
import importlib
import logging

from contracts import quiet_imports

quiet_imports.import_quietly("apache_beam")
import apache_beam as beam  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app  # noqa: E402
from apache_beam.options.pipeline_options import PipelineOptions  # noqa: E402
from apache_beam.options.pipeline_options import StandardOptions  # noqa: E402
from apache_beam.runners.runner import PipelineRunner  # noqa: E402

from contracts import shards  # noqa: E402
from contracts import voc  # noqa: E402
from preprocessing import download  # noqa: E402
from preprocessing import pairs  # noqa: E402
from preprocessing import pipeline  # noqa: E402
from preprocessing import split_outputs  # noqa: E402

EXIT_SETUP, EXIT_USAGE, EXIT_TOO_MANY_REJECTED, EXIT_VERIFICATION = 1, 2, 3, 4

_log = logging.getLogger(__name__)


_VOC_URL, _VOC_MD5, _SBD_URL, _SBD_MD5 = download.VOC_URL, download.VOC_MD5, download.SBD_URL, download.SBD_MD5


@dataclasses.dataclass(frozen=True)
class Job:
  """What to convert, and how (python -m preprocessing.make_tfrecords --help describes each)."""
  voc_root: str
  output_dir: str
  splits: tuple[str, ...] = ("train", "val")
  num_shards: int | None = None  # None: ceil(ids / 1000)
  max_rejected_fraction: float = 0.01
  num_classes: int | None = None  # None: the count of the class names, else VOC's 21
  class_names_file: str | None = None  # None: voc_root/class_names.txt when there is one
  download: bool = False
  with_sbd: bool = False
  download_dir: str | None = None
  voc_url: str = _VOC_URL
  voc_md5: str = _VOC_MD5
  sbd_url: str = _SBD_URL
  sbd_md5: str = _SBD_MD5


class JobFailed(Exception):
  """A failure that ends the job with `exit_code` and the one-line message."""

  def __init__(self, message: str, exit_code: int = EXIT_SETUP):
    super().__init__(message)
    self.exit_code = exit_code


def convert(job: Job, beam_args: list[str] = ()) -> dict[str, split_outputs.SplitSummary]:
  """Runs the job with Beam's options `beam_args` (a runner and its flags); returns each split's summary.

  Raises JobFailed (after writing all it could) or app.UsageError (bad arguments).
  """
  if not job.voc_root or not job.output_dir:
    raise app.UsageError("--voc_root and --output_dir are required", exitcode=EXIT_USAGE)
  splits = list(dict.fromkeys(s.strip() for s in job.splits if s.strip()))
  if not splits:
    raise app.UsageError("--splits is empty", exitcode=EXIT_USAGE)
  options = _pipeline_options(list(beam_args))

  voc_root = _voc_root_ready(job)
  plans = [_plan(voc_root, split, job.num_shards) for split in splits]
  class_names = _class_names(job, voc_root)
  output_dir = job.output_dir
  tf.io.gfile.makedirs(output_dir)
  shards.write_class_names(output_dir, class_names)

  _log.info("converting %s from %s into %s", ", ".join(f"{p.split} ({len(p.ids)} ids, {p.num_shards} shard(s))"
                                                       for p in plans), voc_root, output_dir)
  p = beam.Pipeline(options=options)
  pipeline.build(p, plans, voc_root=voc_root, output_dir=output_dir, num_classes=len(class_names))
  result = p.run()
  state = result.wait_until_finish()
  if state != beam.runners.runner.PipelineState.DONE:
    raise JobFailed(f"the Beam pipeline ended in state {state}")

  counts = {plan.split: pipeline.counters(result, plan.split) for plan in plans}
  if any(c is None for c in counts.values()):
    _log.info("Beam counters are unavailable on %s (its results have no metrics): the record counts are "
              "verified by reading the written shards back", options.view_as(StandardOptions).runner.split(".")[-1])
  summaries = {plan.split: _verify(plan, counts[plan.split], output_dir) for plan in plans}
  _report(summaries, counts, output_dir)

  failures = [f"{s.split}: verification failed: {'; '.join(s.problems)}" for s in summaries.values()
              if not s.verified]
  if failures:
    raise JobFailed(" | ".join(failures) + f" (see {shards.summary_path(output_dir, '<split>')})",
                    EXIT_VERIFICATION)
  too_many = [s for s in summaries.values() if s.rejected_fraction > job.max_rejected_fraction]
  if too_many:
    detail = "; ".join(f"{s.split}: {s.rejected}/{s.listed} rejected ({s.rejected_fraction:.1%})" for s in too_many)
    raise JobFailed(f"too many rejected pairs, above --max_rejected_fraction={job.max_rejected_fraction:g}: "
                    f"{detail}; the good pairs are written, reasons in {output_dir}/<split>-rejected.jsonl",
                    EXIT_TOO_MANY_REJECTED)
  return summaries


def _class_names(job: Job, voc_root: str) -> tuple[str, ...]:
  """--class_names, else voc_root's class_names.txt, else the default names of --num_classes classes; their count
  is the number of classes (--num_classes, when given, must agree)."""
  source = job.class_names_file or shards.class_names_path(voc_root)
  names = shards.read_class_names(source)
  if job.class_names_file and names is None:
    raise app.UsageError(f"--class_names={job.class_names_file}: no such file", exitcode=EXIT_USAGE)
  if names is None:
    return voc.default_class_names(job.num_classes or voc.NUM_CLASSES)
  if job.num_classes and job.num_classes != len(names):
    raise app.UsageError(f"--num_classes={job.num_classes}, but {source} names {len(names)} classes",
                         exitcode=EXIT_USAGE)
  if not 2 <= len(names) <= 255 or len(set(names)) != len(names):
    raise app.UsageError(f"{source}: needs 2 to 255 distinct names, one per line (background first); it has "
                         f"{len(names)}, {len(set(names))} distinct", exitcode=EXIT_USAGE)
  _log.info("%d classes, names from %s: %s", len(names), source, ", ".join(names))
  return names


def _pipeline_options(beam_args: list[str]) -> PipelineOptions:
  """Beam's options from the args our flags did not take; a misspelt flag is refused, not silently dropped.

  The runner's module is imported first: a runner outside Beam's core (the Dask runner) declares its options
  (--dask_client_address, ...) in a PipelineOptions subclass of that module, unknown to Beam until imported.
  """
  runner = PipelineOptions(beam_args).view_as(StandardOptions).runner or "DirectRunner"  # Beam's default
  runner_path = _import_runner(runner)
  options = PipelineOptions(beam_args)
  unknown_names = {name.split("=", 1)[0] for name in set(options.get_all_options(retain_unknown_options=True))
                   - set(options.get_all_options())}
  unknown = [arg for arg in beam_args if arg.startswith("-") and arg.lstrip("-").split("=", 1)[0] in unknown_names]
  if unknown:
    raise app.UsageError(f"unknown flag(s) {' '.join(unknown)}: neither a flag of this job nor a pipeline option "
                         f"of Beam or of --runner={runner}", exitcode=EXIT_USAGE)
  # Said aloud (no warning line for the default); a class path where Beam would not resolve the name itself.
  options.view_as(StandardOptions).runner = runner if "." not in runner and _beam_runner_path(runner) else runner_path
  return options


def _beam_runner_path(runner: str) -> str | None:
  """The class path Beam itself makes of --runner (its registry of names, or a dotted path), else None."""
  if "." in runner:
    return runner
  known = {path.rsplit(".", 1)[-1].lower(): path for path in StandardOptions.ALL_KNOWN_RUNNERS}
  return known.get(runner.lower()) or known.get(runner.lower() + "runner")


def _import_runner(runner: str) -> str:
  """Imports --runner's module (registering its options); returns the runner's class path.

  A short name Beam does not register is looked up where Beam's runners live by convention:
  DaskRunner (or dask) -> apache_beam.runners.dask.dask_runner.DaskRunner.
  """
  path = _beam_runner_path(runner)
  if path is None:
    stem = runner.lower().removesuffix("runner")
    path = f"apache_beam.runners.{stem}.{stem}_runner.{runner}"
  module_name, class_name = path.rsplit(".", 1)
  try:
    module = importlib.import_module(module_name)
  except ModuleNotFoundError as e:
    if e.name and e.name != module_name and not module_name.startswith(f"{e.name}."):  # one it imports is missing
      raise JobFailed(f"--runner={runner} needs the {e.name!r} package, which is not installed (the runner's "
                      f"Beam extra: e.g. pip install 'apache-beam[dask]' for the DaskRunner)") from None
    module = None
  except ImportError as e:
    raise JobFailed(f"--runner={runner}: {module_name} does not import: {e}") from None
  members = {name.lower(): name for name in vars(module)} if module else {}
  name = members.get(class_name.lower()) or members.get(class_name.lower() + "runner")
  cls = getattr(module, name) if name else None
  if not (isinstance(cls, type) and issubclass(cls, PipelineRunner)):
    raise app.UsageError(f"unknown --runner={runner}: neither one of Beam's runners "
                         f"({', '.join(StandardOptions.KNOWN_RUNNER_NAMES)}), nor a runner module "
                         f"apache_beam.runners.NAME.NAME_runner, nor the class path of a PipelineRunner",
                         exitcode=EXIT_USAGE)
  return f"{module_name}.{name}"


def _voc_root_ready(job: Job) -> str:
  """voc_root, after downloading VOC2012 into it when it has none (or --download), and SBD with --with_sbd."""
  voc_root = job.voc_root
  has_images = tf.io.gfile.isdir(tf.io.gfile.join(voc_root, voc.IMAGE_DIR))
  has_aug = tf.io.gfile.exists(voc.split_list_path(voc_root, "train_aug")) and \
      tf.io.gfile.isdir(tf.io.gfile.join(voc_root, voc.AUG_MASK_DIR))
  if has_images and not job.download and not (job.with_sbd and not has_aug):
    return voc_root
  if not has_images:
    _log.info("%s has no %s/ folder: fetching VOC2012 from %s", voc_root, voc.IMAGE_DIR, job.voc_url)
  try:
    return download.ensure_voc(voc_root, download_dir=job.download_dir, force=job.download,
                               url=job.voc_url, md5=job.voc_md5, with_sbd=job.with_sbd,
                               sbd_url=job.sbd_url, sbd_md5=job.sbd_md5)
  except download.DownloadError as e:
    raise JobFailed(f"download failed: {e} (or point --voc_root at a VOC2012 folder, the one holding "
                    f"{voc.IMAGE_DIR}/)") from None


def _plan(voc_root: str, split: str, num_shards: int | None) -> pipeline.SplitPlan:
  if not tf.io.gfile.exists(voc.split_list_path(voc_root, split)):
    available = pairs.available_splits(voc_root)
    hint = " (train_aug comes with --with_sbd)" if split == "train_aug" else ""
    raise JobFailed(f"no list for split {split!r}: {voc.split_list_path(voc_root, split)} does not exist{hint}; "
                    f"available splits: {', '.join(available) or 'none'}")
  ids, repeats = pairs.partition_repeats(voc.read_split_ids(voc_root, split))
  num_shards = num_shards or shards.default_num_shards(len(ids))
  return pipeline.SplitPlan(split=split, ids=tuple(ids), repeats=tuple(repeats), num_shards=num_shards)


def _verify(plan: pipeline.SplitPlan, counts: dict[str, int] | None, output_dir: str) -> split_outputs.SplitSummary:
  counts = counts or {}  # None on a runner without metrics: the expected counts are derived from the input
  summary = split_outputs.verify_and_summarise(
      output_dir=output_dir, split=plan.split, num_shards=plan.num_shards, listed=plan.listed,
      distinct=len(plan.ids), read=counts.get(pipeline.READ), expected_written=counts.get(pipeline.WRITTEN),
      expected_rejected=counts.get(pipeline.REJECTED))
  if summary.verified:
    for stale in split_outputs.stale_shards(output_dir, plan.split, plan.num_shards):
      _log.info("deleting %s, a shard of an earlier run with another shard count", stale)
      tf.io.gfile.remove(stale)
    temp_dirs = split_outputs.leftover_temp_dirs(output_dir, plan.split)
    if temp_dirs:
      _log.info("deleting %d temp folder(s) of Beam's writes left in %s (beam-temp-%s-*)", len(temp_dirs),
                output_dir, plan.split)
      for temp_dir in temp_dirs:
        tf.io.gfile.rmtree(temp_dir)
  return summary


def _report(summaries: dict[str, split_outputs.SplitSummary], counts_by_split: dict[str, dict[str, int] | None],
            output_dir: str) -> None:
  for split in summaries:
    counts = counts_by_split[split]
    if counts is None:
      continue  # said once in the log
    print(f"Beam counters {pipeline.metrics_namespace(split)}: "
          + ", ".join(f"{name}={value}" for name, value in sorted(counts.items())))
  for s in summaries.values():
    reasons = ", ".join(f"{reason} {n}" for reason, n in s.rejected_by_reason.items())
    print(f"{s.split}: {s.listed} listed, {s.written} written in {s.num_shards} shard(s)"
          f"{'' if s.verified else ' (VERIFICATION FAILED)'}, {s.rejected} rejected"
          f"{f' ({reasons})' if reasons else ''}")
  print(f"outputs in {output_dir}: <split>-?????-of-?????{shards.SHARD_SUFFIX}, <split>-rejected.jsonl, "
        f"<split>-summary.json")


def quiet_beam_logging() -> None:
  """Beam's INFO chatter (runner choice, Prism download attempt, stages) would bury our progress lines."""
  logging.getLogger("apache_beam").setLevel(logging.WARNING)
  # Its "Deleting N existing files" warning is the planned overwrite of a re-run's same-named outputs.
  logging.getLogger("apache_beam.io.filebasedsink").setLevel(logging.ERROR)
  # The Dask runner warns, once per Create, that its default partition size is no longer 1 (--dask_npartitions
  # or --dask_partition_size set it).
  logging.getLogger("apache_beam.runners.dask.transform_evaluator").setLevel(logging.ERROR)


