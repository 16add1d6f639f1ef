"""The conversion job: a data set in its own layout and mask encoding (or VOC's) -> verified, sharded DeepLab
TFRecords with Apache Beam (what python -m preprocessing.make_tfrecords runs; its docstring says what it writes
and its exit codes).
"""

from collections.abc import Sequence
import dataclasses
import importlib
import logging

from contracts import quiet_imports

quiet_imports.import_quietly("apache_beam")
from absl import app  # noqa: E402
import apache_beam as beam  # noqa: E402
from apache_beam.options.pipeline_options import PipelineOptions  # noqa: E402
from apache_beam.options.pipeline_options import StandardOptions  # noqa: E402
from apache_beam.runners.runner import PipelineRunner  # noqa: E402
import tensorflow as tf  # noqa: E402

from contracts import errors  # noqa: E402
from contracts import shards  # noqa: E402
from contracts import voc  # noqa: E402
from preprocessing import download  # noqa: E402
from preprocessing import mask_encoding  # noqa: E402
from preprocessing import pairs  # noqa: E402
from preprocessing import pipeline  # noqa: E402
from preprocessing import sources  # noqa: E402
from preprocessing import split_outputs  # noqa: E402

EXIT_SETUP, EXIT_USAGE, EXIT_TOO_MANY_REJECTED, EXIT_VERIFICATION = 1, 2, 3, 4

_log = logging.getLogger(__name__)


_VOC_URL, _VOC_MD5, _SBD_URL, _SBD_MD5 = download.VOC_URL, download.VOC_MD5, download.SBD_URL, download.SBD_MD5


@dataclasses.dataclass(frozen=True)
class Job:
  """What to convert, and how (python -m preprocessing.make_tfrecords --help describes each). The data is one of:
  voc_root; images + masks (folders); pair_lists (+ reroot)."""

  output_dir: str
  voc_root: str | None = None
  images: str | None = None
  masks: str | None = None
  pair_lists: str | None = None
  reroot: str | None = None
  splits: tuple[str, ...] = ("train", "val")
  num_shards: int | None = None  # None: ceil(ids / 1000)
  max_rejected_fraction: float = 0.01
  num_classes: int | None = None  # None: the count of the class names, else VOC's 21
  class_names_file: str | None = None  # None: voc_root/class_names.txt when there is one
  void_values: tuple[int, ...] | None = None  # None: 255 (class-id masks)
  colour_table: str | None = None
  label_map: str | None = None
  unknown_to_void: bool = False
  download: bool = False
  with_sbd: bool = False
  download_dir: str | None = None
  voc_url: str = _VOC_URL
  voc_md5: str = _VOC_MD5
  sbd_url: str = _SBD_URL
  sbd_md5: str = _SBD_MD5


class JobFailed(errors.UserError):
  """A failure that ends the job with `exit_code` and the one-line message."""

  def __init__(self, message: str, exit_code: int = EXIT_SETUP):
    super().__init__(message)
    self.exit_code = exit_code


def convert(job: Job, beam_args: Sequence[str] = ()) -> dict[str, split_outputs.SplitSummary]:
  """Runs the job with Beam's options `beam_args` (a runner and its flags); returns each split's summary.

  Raises JobFailed (after writing all it could) or app.UsageError (bad arguments).
  """
  splits = list(dict.fromkeys(s.strip() for s in job.splits if s.strip()))
  if not splits:
    raise app.UsageError("--splits is empty", exitcode=EXIT_USAGE)
  _check_data_flags(job, splits)
  options = _pipeline_options(list(beam_args))

  voc_root = _voc_root_ready(job, job.voc_root) if job.voc_root else None
  class_names, class_colours, encoding = _classes(job, voc_root)
  listings = {split: _listing(job, voc_root, split) for split in splits}
  plans = [
    pipeline.SplitPlan(
      split=split,
      pairs=listed.pairs,
      refused=tuple(pairs.Rejection(*r) for r in listed.refused),
      num_shards=job.num_shards or shards.default_num_shards(len(listed.pairs)),
    )
    for split, listed in listings.items()
  ]
  output_dir = job.output_dir
  tf.io.gfile.makedirs(output_dir)
  shards.write_class_names(output_dir, class_names)
  if class_colours:
    shards.write_class_colours(output_dir, class_colours)
  elif tf.io.gfile.exists(shards.class_colours_path(output_dir)):  # an earlier run's colours are not these classes'
    tf.io.gfile.remove(shards.class_colours_path(output_dir))

  _log.info(
    "converting %s from %s into %s",
    ", ".join(f"{p.split} ({len(p.pairs)} pairs, {p.num_shards} shard(s))" for p in plans),
    _data_description(job),
    output_dir,
  )
  _log.info("%s", encoding.describe())
  p = beam.Pipeline(options=options)
  pipeline.build(p, plans, encoding=encoding, output_dir=output_dir)
  result = p.run()
  state = result.wait_until_finish()
  if state != beam.runners.runner.PipelineState.DONE:
    raise JobFailed(f"the Beam pipeline ended in state {state}")

  counts = {plan.split: pipeline.counters(result, plan.split) for plan in plans}
  if any(c is None for c in counts.values()):
    _log.info(
      "Beam counters are unavailable on %s (its results have no metrics): the record counts are "
      "verified by reading the written shards back",
      options.view_as(StandardOptions).runner.split(".")[-1],
    )
  summaries = {
    plan.split: _verify(plan, counts[plan.split], output_dir, class_names, listings[plan.split].masks_without_image)
    for plan in plans
  }
  _report(summaries, counts, output_dir)

  failures = [f"{s.split}: verification failed: {'; '.join(s.problems)}" for s in summaries.values() if not s.verified]
  if failures:
    raise JobFailed(" | ".join(failures) + f" (see {shards.summary_path(output_dir, '<split>')})", EXIT_VERIFICATION)
  too_many = [s for s in summaries.values() if s.rejected_fraction > job.max_rejected_fraction]
  if too_many:
    detail = "; ".join(f"{s.split}: {s.rejected}/{s.listed} rejected ({s.rejected_fraction:.1%})" for s in too_many)
    raise JobFailed(
      f"too many rejected pairs, above --max_rejected_fraction={job.max_rejected_fraction:g}: "
      f"{detail}; the good pairs are written, reasons in {output_dir}/<split>-rejected.jsonl",
      EXIT_TOO_MANY_REJECTED,
    )
  return summaries


def _check_data_flags(job: Job, splits: list[str]) -> None:
  given = [name for name in ("voc_root", "images", "pair_lists") if getattr(job, name)]
  if len(given) != 1 or not job.output_dir:
    raise app.UsageError(
      "--output_dir and one of --voc_root (VOC layout), --images with --masks (folders) or "
      f"--pair_lists (list files) are required{'; given: --' + ', --'.join(given) if given else ''}",
      exitcode=EXIT_USAGE,
    )
  if bool(job.images) != bool(job.masks):
    raise app.UsageError(
      "--images and --masks go together: the photos' glob and their masks' template", exitcode=EXIT_USAGE
    )
  if job.reroot and not job.pair_lists:
    raise app.UsageError("--reroot moves the paths of --pair_lists; there are none", exitcode=EXIT_USAGE)
  if job.colour_table and (job.void_values is not None or job.class_names_file):
    raise app.UsageError(
      "--colour_table names the classes and their void colours: --class_names and --void_values go with class-id masks",
      exitcode=EXIT_USAGE,
    )
  try:
    sources.check_templates(images=job.images, masks=job.masks, pair_lists=job.pair_lists, splits=tuple(splits))
    sources.parse_reroot(job.reroot)
  except sources.SourceError as e:
    raise app.UsageError(str(e), exitcode=EXIT_USAGE) from None


def _data_description(job: Job) -> str:
  if job.voc_root:
    return job.voc_root
  if job.images:
    return f"{job.images} (masks {job.masks})"
  return f"{job.pair_lists}{f' (paths under {job.reroot})' if job.reroot else ''}"


def _listing(job: Job, voc_root: str | None, split: str) -> sources.Listed:
  try:
    if voc_root:
      if not tf.io.gfile.exists(voc.split_list_path(voc_root, split)):
        available = sources.available_splits(voc_root)
        hint = " (train_aug comes with --with_sbd)" if split == "train_aug" else ""
        raise JobFailed(
          f"no list for split {split!r}: {voc.split_list_path(voc_root, split)} does not exist"
          f"{hint}; available splits: {', '.join(available) or 'none'}"
        )
      return sources.voc_pairs(voc_root, split)
    if job.images:
      assert job.masks  # _check_data_flags: --images goes with --masks.
      return sources.folder_pairs(job.images, job.masks, split)
    assert job.pair_lists  # _check_data_flags: one source of data is given.
    return sources.list_pairs(job.pair_lists, split, sources.parse_reroot(job.reroot))
  except sources.SourceError as e:
    raise JobFailed(str(e)) from None


def _classes(job: Job, voc_root: str | None) -> tuple[tuple[str, ...], tuple | None, mask_encoding.MaskEncoding]:
  """(class names, their colours or None, how masks encode them): from --colour_table, else --class_names (or
  voc_root's class_names.txt) and --num_classes; --void_values, --label_map and --unknown_to_void on top."""
  try:
    table = None
    if job.colour_table:
      table = mask_encoding.parse_colour_table(_read_text(job.colour_table, "--colour_table"), job.colour_table)
      names = table.names
      _log.info(
        "%d classes and their colours from %s: %s; void colour(s): %s",
        len(names),
        job.colour_table,
        ", ".join(names),
        ", ".join(str(c) for c in table.void_colours) or "none",
      )
      if job.num_classes and job.num_classes != len(names):
        raise app.UsageError(
          f"--num_classes={job.num_classes}, but {job.colour_table} has {len(names)} classes", exitcode=EXIT_USAGE
        )
    else:
      names = _class_names(job, voc_root)
    label_map: tuple[tuple[int, int], ...] = ()  # (raw value, class id or 255)
    by_colour = table is not None
    if job.label_map:  # without a colour table, a map of colours makes the masks colour masks
      by_colour, label_map = mask_encoding.parse_label_map(
        _read_text(job.label_map, "--label_map"), job.label_map, by_colour=True if table else None, class_names=names
      )
      beyond = sorted({target for _, target in label_map if target >= len(names) and target != voc.IGNORE_LABEL})
      if beyond:
        raise app.UsageError(
          f"{job.label_map}: target class id(s) {beyond} beyond the {len(names)} classes ({', '.join(names)})",
          exitcode=EXIT_USAGE,
        )
  except mask_encoding.EncodingError as e:
    raise app.UsageError(str(e), exitcode=EXIT_USAGE) from None
  if by_colour:
    void = tuple(mask_encoding.pack(colour) for colour in table.void_colours) if table else ()
    if job.void_values is not None:
      raise app.UsageError(
        f"--void_values goes with class-id masks; {job.label_map} maps colours: map the void colours to void there",
        exitcode=EXIT_USAGE,
      )
  else:
    void = job.void_values if job.void_values is not None else (voc.IGNORE_LABEL,)
    named = sorted(v for v in void if v < len(names) and not label_map)
    if named:
      raise app.UsageError(
        f"--void_values: {', '.join(f'{v} is class {names[v]!r}' for v in named)} of the "
        f"{len(names)} classes; a void value is no class: drop it from the names (or map it "
        f"with --label_map)",
        exitcode=EXIT_USAGE,
      )
  colours = table.colours if table else (() if by_colour else None)
  encoding = mask_encoding.MaskEncoding(
    num_classes=len(names),
    colours=colours,
    void_values=tuple(void),
    label_map=label_map,
    unknown_to_void=job.unknown_to_void,
  )
  return names, (table.colours if table else None), encoding


def _read_text(path: str, flag: str) -> str:
  if not tf.io.gfile.exists(path):
    raise app.UsageError(f"{flag}={path}: no such file", exitcode=EXIT_USAGE)
  with tf.io.gfile.GFile(path) as f:
    return f.read()


def _class_names(job: Job, voc_root: str | None) -> tuple[str, ...]:
  """--class_names, else voc_root's class_names.txt, else the default names of --num_classes classes; their count
  is the number of classes (--num_classes, when given, must agree). A data set other than VOC's layout says how
  many classes it has."""
  source = job.class_names_file or (shards.class_names_path(voc_root) if voc_root else None)
  names = shards.read_class_names(source) if source else None
  if job.class_names_file and names is None:
    raise app.UsageError(f"--class_names={job.class_names_file}: no such file", exitcode=EXIT_USAGE)
  if names is None:
    if not voc_root and not job.num_classes:
      raise app.UsageError(
        "name your data set's classes: --class_names=FILE (one per line, in class-id order), "
        "--colour_table=FILE for colour masks, or at least --num_classes=N",
        exitcode=EXIT_USAGE,
      )
    return voc.default_class_names(job.num_classes or voc.NUM_CLASSES)
  if job.num_classes and job.num_classes != len(names):
    raise app.UsageError(
      f"--num_classes={job.num_classes}, but {source} names {len(names)} classes", exitcode=EXIT_USAGE
    )
  if not 2 <= len(names) <= 255 or len(set(names)) != len(names):
    raise app.UsageError(
      f"{source}: needs 2 to 255 distinct names, one per line (background first); it has "
      f"{len(names)}, {len(set(names))} distinct",
      exitcode=EXIT_USAGE,
    )
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
  unknown_names = {
    name.split("=", 1)[0]
    for name in set(options.get_all_options(retain_unknown_options=True)) - set(options.get_all_options())
  }
  unknown = [arg for arg in beam_args if arg.startswith("-") and arg.lstrip("-").split("=", 1)[0] in unknown_names]
  if unknown:
    raise app.UsageError(
      f"unknown flag(s) {' '.join(unknown)}: neither a flag of this job nor a pipeline option "
      f"of Beam or of --runner={runner}",
      exitcode=EXIT_USAGE,
    )
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
      raise JobFailed(
        f"--runner={runner} needs the {e.name!r} package, which is not installed (the runner's "
        f"Beam extra: e.g. pip install 'apache-beam[dask]' for the DaskRunner)"
      ) from None
    module = None
  except ImportError as e:
    raise JobFailed(f"--runner={runner}: {module_name} does not import: {e}") from None
  members = {name.lower(): name for name in vars(module)} if module else {}
  name = members.get(class_name.lower()) or members.get(class_name.lower() + "runner")
  cls = getattr(module, name) if name else None
  if not (isinstance(cls, type) and issubclass(cls, PipelineRunner)):
    raise app.UsageError(
      f"unknown --runner={runner}: neither one of Beam's runners "
      f"({', '.join(StandardOptions.KNOWN_RUNNER_NAMES)}), nor a runner module "
      f"apache_beam.runners.NAME.NAME_runner, nor the class path of a PipelineRunner",
      exitcode=EXIT_USAGE,
    )
  return f"{module_name}.{name}"


def _voc_root_ready(job: Job, voc_root: str) -> str:
  """voc_root (job's), after downloading VOC2012 into it when it has none (or --download), and SBD with --with_sbd."""
  has_images = tf.io.gfile.isdir(tf.io.gfile.join(voc_root, voc.IMAGE_DIR))
  has_aug = tf.io.gfile.exists(voc.split_list_path(voc_root, "train_aug")) and tf.io.gfile.isdir(
    tf.io.gfile.join(voc_root, voc.AUG_MASK_DIR)
  )
  if has_images and not job.download and not (job.with_sbd and not has_aug):
    return voc_root
  if not has_images:
    _log.info("%s has no %s/ folder: fetching VOC2012 from %s", voc_root, voc.IMAGE_DIR, job.voc_url)
  try:
    return download.ensure_voc(
      voc_root,
      download_dir=job.download_dir,
      force=job.download,
      url=job.voc_url,
      md5=job.voc_md5,
      with_sbd=job.with_sbd,
      sbd_url=job.sbd_url,
      sbd_md5=job.sbd_md5,
    )
  except download.DownloadError as e:
    raise JobFailed(
      f"download failed: {e} (or point --voc_root at a VOC2012 folder, the one holding {voc.IMAGE_DIR}/)"
    ) from None


def _verify(
  plan: pipeline.SplitPlan,
  counts: dict[str, int] | None,
  output_dir: str,
  class_names: tuple[str, ...],
  masks_without_image: tuple[str, ...] | None,
) -> split_outputs.SplitSummary:
  counts = counts or {}  # None on a runner without metrics: the expected counts are derived from the input
  summary = split_outputs.verify_and_summarise(
    output_dir=output_dir,
    split=plan.split,
    num_shards=plan.num_shards,
    listed=plan.listed,
    distinct=len(plan.pairs),
    read=counts.get(pipeline.READ),
    expected_written=counts.get(pipeline.WRITTEN),
    expected_rejected=counts.get(pipeline.REJECTED),
    class_names=class_names,
    masks_without_image=masks_without_image,
  )
  if summary.verified:
    for stale in split_outputs.stale_shards(output_dir, plan.split, plan.num_shards):
      _log.info("deleting %s, a shard of an earlier run with another shard count", stale)
      tf.io.gfile.remove(stale)
    temp_dirs = split_outputs.leftover_temp_dirs(output_dir, plan.split)
    if temp_dirs:
      _log.info(
        "deleting %d temp folder(s) of Beam's writes left in %s (beam-temp-%s-*)",
        len(temp_dirs),
        output_dir,
        plan.split,
      )
      for temp_dir in temp_dirs:
        tf.io.gfile.rmtree(temp_dir)
  return summary


def _report(
  summaries: dict[str, split_outputs.SplitSummary], counts_by_split: dict[str, dict[str, int] | None], output_dir: str
) -> None:
  for split in summaries:
    counts = counts_by_split[split]
    if counts is None:
      continue  # said once in the log
    print(
      f"Beam counters {pipeline.metrics_namespace(split)}: "
      + ", ".join(f"{name}={value}" for name, value in sorted(counts.items()))
    )
  for s in summaries.values():
    reasons = ", ".join(f"{reason} {n}" for reason, n in s.rejected_by_reason.items())
    print(
      f"{s.split}: {s.listed} listed, {s.written} written in {s.num_shards} shard(s)"
      f"{'' if s.verified else ' (VERIFICATION FAILED)'}, {s.rejected} rejected"
      f"{f' ({reasons})' if reasons else ''}"
    )
    total = sum(s.class_pixels.values()) + s.void_pixels
    if total:
      shares = ", ".join(f"{name} {n / total:.1%}" for name, n in s.class_pixels.items())
      unknown = f" ({s.unknown_to_void_pixels} of unknown values)" if s.unknown_to_void_pixels else ""
      print(f"{s.split} pixels: {shares}, void {s.void_pixels / total:.1%}{unknown}")
    if s.masks_without_image:
      print(
        f"{s.split}: {s.masks_without_image} mask(s) without an image, e.g. "
        f"{', '.join(s.masks_without_image_examples[:3])}"
      )
  print(
    f"outputs in {output_dir}: <split>-?????-of-?????{shards.SHARD_SUFFIX}, <split>-rejected.jsonl, "
    f"<split>-summary.json"
  )


def quiet_beam_logging() -> None:
  """Beam's INFO chatter (runner choice, Prism download attempt, stages) would bury our progress lines."""
  logging.getLogger("apache_beam").setLevel(logging.WARNING)
  # Its "Deleting N existing files" warning is the planned overwrite of a re-run's same-named outputs.
  logging.getLogger("apache_beam.io.filebasedsink").setLevel(logging.ERROR)
  # The Dask runner warns, once per Create, that its default partition size is no longer 1 (--dask_npartitions
  # or --dask_partition_size set it).
  logging.getLogger("apache_beam.runners.dask.transform_evaluator").setLevel(logging.ERROR)
