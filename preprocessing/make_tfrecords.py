r"""Converts VOC-format segmentation data into verified, sharded DeepLab TFRecords with Apache Beam.

  python -m preprocessing.make_tfrecords --voc_root=data/VOC2012 --output_dir=data/tfrecords \
      [--splits=train,val] [--num_shards=N] [--max_rejected_fraction=0.01] [--download] [--with_sbd] \
      [any Beam pipeline option: --runner=DataflowRunner --project=.. --region=.. --temp_location=gs://.. \
       --setup_file=./setup.py, --direct_running_mode=.., --runner=DaskRunner --dask_client_address=tcp://..:8786]

Writes, per split, into output_dir: {split}-00000-of-000NN.tfrecord shards, {split}-rejected.jsonl (one line per
rejected id, with a reason code) and {split}-summary.json. Bad pairs never stop the job; after the pipeline, the
records in the written shards are counted against what was sent to the writer. Progress ("train: 1200/2913
pairs (450 pairs/s)") is logged every few seconds; Beam counters and a summary per split are printed at the end.
Without --runner, Beam's DirectRunner runs it here (with internet it first tries Beam's Prism runner, which it
downloads once; offline it falls back to its in-process runner at once). --runner takes Beam's runner names, a
runner's class path, or the name of one of Beam's runners outside its registry (DaskRunner); the runner's module
is imported before the options are checked, so its own options are known. On a runner without metrics (the Dask
runner) the counters are skipped with a log line; the shards are still read back and counted.

A voc_root without JPEGImages/ is downloaded into (VOC2012 trainval, md5-verified, resumable); that needs a local
voc_root: download locally, copy the folder to the bucket, then pass its gs:// path. Every other path may be gs://.

Exit codes: 0 done; 1 setup problem (no such split list, download failed); 2 bad flags;
3 more rejected pairs than --max_rejected_fraction of a split (everything good is still written);
4 the shards hold a different number of records than were written. Each failure ends with one line on stderr.
"""

import importlib
import logging
import sys

import preprocessing  # noqa: F401  (quiet TensorFlow/Beam import first)
import apache_beam as beam
import tensorflow as tf
from absl import app
from absl import flags
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.options.pipeline_options import StandardOptions
from apache_beam.runners.runner import PipelineRunner

from launch import cli
from preprocessing import download
from preprocessing import pairs
from preprocessing import pipeline
from preprocessing import split_outputs
from preprocessing import voc

EXIT_SETUP, EXIT_USAGE, EXIT_TOO_MANY_REJECTED, EXIT_VERIFICATION = 1, 2, 3, 4

# The job's flags live in their own FlagValues, appended to absl's global one (the command line and --help see
# them): `run` parses only these, so another module's required flags (imported in the same process, as in a test
# session) do not break it.
JOB_FLAGS = flags.FlagValues()
_OURS = {"flag_values": JOB_FLAGS}
flags.DEFINE_string("voc_root", None, "VOC2012 folder (JPEGImages/, SegmentationClass/, ImageSets/); local or gs://.",
                    **_OURS)
flags.DEFINE_string("output_dir", None, "Where the TFRecords, rejected.jsonl and summary.json go; local or gs://.",
                    **_OURS)
flags.DEFINE_list("splits", ["train", "val"], "Lists under ImageSets/Segmentation to convert (e.g. train_aug).",
                  **_OURS)
flags.DEFINE_integer("num_shards", None, "Shards per split; default ceil(ids / 1000), ~100 MB each.", lower_bound=1,
                     **_OURS)
flags.DEFINE_float("max_rejected_fraction", 0.01, "Exit non-zero (after writing) when more than this fraction "
                   "of a split's listed ids is rejected.", lower_bound=0.0, upper_bound=1.0, **_OURS)
flags.DEFINE_integer("num_classes", voc.NUM_CLASSES, "Labels must be 0..num_classes-1 or 255; default: the count "
                     "of the class names when there are some, else VOC's 21.", lower_bound=1, upper_bound=255, **_OURS)
flags.DEFINE_string("class_names", None, f"A text file of the classes' names, one per line, background first; "
                    f"default voc_root/{split_outputs.CLASS_NAMES_FILE} when there is one, else VOC's names for 21 "
                    f"classes. Written beside the shards as {split_outputs.CLASS_NAMES_FILE}, where training and "
                    f"evaluation take them from.", **_OURS)
flags.DEFINE_bool("download", False, "Download (or re-extract from a kept archive) VOC2012 into voc_root even "
                  "when it has data; without it, only a voc_root with no JPEGImages/ is downloaded into.", **_OURS)
flags.DEFINE_bool("with_sbd", False, "Add SBD's SegmentationClassAug masks and the train_aug list (downloads).",
                  **_OURS)
flags.DEFINE_string("download_dir", None, "Where downloaded archives are kept; default downloads/ beside voc_root.",
                    **_OURS)
flags.DEFINE_string("voc_url", download.VOC_URL, "VOC2012 trainval tar (a mirror may be given).", **_OURS)
flags.DEFINE_string("voc_md5", download.VOC_MD5, "md5 of the VOC tar.", **_OURS)
flags.DEFINE_string("sbd_url", download.SBD_URL, "SBD benchmark.tgz (a mirror may be given).", **_OURS)
flags.DEFINE_string("sbd_md5", download.SBD_MD5, "md5 of the SBD archive.", **_OURS)
cli.register_check("splits", cli.each(cli.matching(cli.SPLIT)), "comma-separated split names of letters, digits, "
                   "'_', '.' or '-', e.g. train_aug,val", **_OURS)
for _name in ("voc_url", "sbd_url"):
  cli.register_check(_name, cli.matching(r"(https?|file)://\S+"), "an http(s):// or file:// URL", **_OURS)
for _name in ("voc_md5", "sbd_md5"):
  cli.register_check(_name, cli.matching(cli.MD5), cli.MD5_ACCEPTS, **_OURS)
flags.FLAGS.append_flag_values(JOB_FLAGS)
for _name in JOB_FLAGS:
  flags.declare_key_flag(_name)  # listed by --helpshort, as this module's own flags
del _name
FLAGS = JOB_FLAGS

_log = logging.getLogger(__name__)


class JobFailed(Exception):
  """A failure that ends the job with `exit_code` and the one-line message."""

  def __init__(self, message: str, exit_code: int = EXIT_SETUP):
    super().__init__(message)
    self.exit_code = exit_code


def parse_flags(argv: list[str]) -> list[str]:
  """app.run's flags parser: parses our flags and absl's, returns [argv[0]] + everything else (Beam's options)."""
  rest = cli.parse_flags(argv, known_only=True, program="make_tfrecords")
  JOB_FLAGS.mark_as_parsed()  # same Flag objects, parsed through the global FlagValues
  return rest


def run(argv: list[str]) -> dict[str, split_outputs.SplitSummary]:
  """In-process entry point (tests, benchmarks): argv as on the command line, argv[0] included.

  Raises JobFailed (after writing all it could) or app.UsageError instead of exiting.
  """
  FLAGS.unparse_flags()  # flags from an earlier call in this process must not leak into this one
  try:
    beam_argv = FLAGS(list(argv), known_only=True)
  except flags.Error as e:
    raise app.UsageError(str(e), exitcode=EXIT_USAGE) from None
  return convert(beam_argv[1:])


def convert(beam_args: list[str]) -> dict[str, split_outputs.SplitSummary]:
  """The job, from parsed FLAGS and the remaining (Beam) args."""
  if not FLAGS.voc_root or not FLAGS.output_dir:
    raise app.UsageError("--voc_root and --output_dir are required", exitcode=EXIT_USAGE)
  splits = list(dict.fromkeys(s.strip() for s in FLAGS.splits if s.strip()))
  if not splits:
    raise app.UsageError("--splits is empty", exitcode=EXIT_USAGE)
  options = _pipeline_options(beam_args)

  voc_root = _voc_root_ready()
  plans = [_plan(voc_root, split) for split in splits]
  class_names = _class_names(voc_root)
  output_dir = FLAGS.output_dir
  tf.io.gfile.makedirs(output_dir)
  split_outputs.write_class_names(output_dir, class_names)

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
    raise JobFailed(" | ".join(failures) + f" (see {split_outputs.summary_path(output_dir, '<split>')})",
                    EXIT_VERIFICATION)
  too_many = [s for s in summaries.values() if s.rejected_fraction > FLAGS.max_rejected_fraction]
  if too_many:
    detail = "; ".join(f"{s.split}: {s.rejected}/{s.listed} rejected ({s.rejected_fraction:.1%})" for s in too_many)
    raise JobFailed(f"too many rejected pairs, above --max_rejected_fraction={FLAGS.max_rejected_fraction:g}: "
                    f"{detail}; the good pairs are written, reasons in {output_dir}/<split>-rejected.jsonl",
                    EXIT_TOO_MANY_REJECTED)
  return summaries


def _class_names(voc_root: str) -> tuple[str, ...]:
  """--class_names, else voc_root's class_names.txt, else the default names of --num_classes classes; their count
  is the number of classes (--num_classes, when given, must agree)."""
  source = FLAGS.class_names or split_outputs.class_names_path(voc_root)
  names = split_outputs.read_class_names(source)
  if FLAGS.class_names and names is None:
    raise app.UsageError(f"--class_names={FLAGS.class_names}: no such file", exitcode=EXIT_USAGE)
  if names is None:
    return voc.default_class_names(FLAGS.num_classes)
  if FLAGS["num_classes"].present and FLAGS.num_classes != len(names):
    raise app.UsageError(f"--num_classes={FLAGS.num_classes}, but {source} names {len(names)} classes",
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


def _voc_root_ready() -> str:
  """voc_root, after downloading VOC2012 into it when it has none (or --download), and SBD with --with_sbd."""
  voc_root = FLAGS.voc_root
  has_images = tf.io.gfile.isdir(tf.io.gfile.join(voc_root, voc.IMAGE_DIR))
  has_aug = tf.io.gfile.exists(pairs.split_list_path(voc_root, "train_aug")) and \
      tf.io.gfile.isdir(tf.io.gfile.join(voc_root, voc.AUG_MASK_DIR))
  if has_images and not FLAGS.download and not (FLAGS.with_sbd and not has_aug):
    return voc_root
  if not has_images:
    _log.info("%s has no %s/ folder: fetching VOC2012 from %s", voc_root, voc.IMAGE_DIR, FLAGS.voc_url)
  try:
    return download.ensure_voc(voc_root, download_dir=FLAGS.download_dir, force=FLAGS.download,
                               url=FLAGS.voc_url, md5=FLAGS.voc_md5, with_sbd=FLAGS.with_sbd,
                               sbd_url=FLAGS.sbd_url, sbd_md5=FLAGS.sbd_md5)
  except download.DownloadError as e:
    raise JobFailed(f"download failed: {e} (or point --voc_root at a VOC2012 folder, the one holding "
                    f"{voc.IMAGE_DIR}/)") from None


def _plan(voc_root: str, split: str) -> pipeline.SplitPlan:
  if not tf.io.gfile.exists(pairs.split_list_path(voc_root, split)):
    available = pairs.available_splits(voc_root)
    hint = " (train_aug comes with --with_sbd)" if split == "train_aug" else ""
    raise JobFailed(f"no list for split {split!r}: {pairs.split_list_path(voc_root, split)} does not exist{hint}; "
                    f"available splits: {', '.join(available) or 'none'}")
  ids, repeats = pairs.partition_repeats(pairs.read_split_ids(voc_root, split))
  num_shards = FLAGS.num_shards or split_outputs.default_num_shards(len(ids))
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
  print(f"outputs in {output_dir}: <split>-?????-of-?????{split_outputs.SHARD_SUFFIX}, <split>-rejected.jsonl, "
        f"<split>-summary.json")


def quiet_beam_logging() -> None:
  """Beam's INFO chatter (runner choice, Prism download attempt, stages) would bury our progress lines."""
  logging.getLogger("apache_beam").setLevel(logging.WARNING)
  # Its "Deleting N existing files" warning is the planned overwrite of a re-run's same-named outputs.
  logging.getLogger("apache_beam.io.filebasedsink").setLevel(logging.ERROR)
  # The Dask runner warns, once per Create, that its default partition size is no longer 1 (--dask_npartitions
  # or --dask_partition_size set it).
  logging.getLogger("apache_beam.runners.dask.transform_evaluator").setLevel(logging.ERROR)


def main(argv: list[str]) -> int:
  quiet_beam_logging()
  try:
    convert(argv[1:])
  except JobFailed as e:
    sys.stdout.flush()
    sys.stderr.write(f"make_tfrecords: error: {e}\n")
    return e.exit_code
  except app.UsageError as e:
    sys.stderr.write(f"make_tfrecords: error: {e} (see --helpfull)\n")
    return EXIT_USAGE
  return 0


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
