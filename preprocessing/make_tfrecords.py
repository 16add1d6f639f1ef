r"""Converts segmentation data, VOC's or a data set in its own layout and mask encoding, into verified, sharded
DeepLab TFRecords with Apache Beam.

  python -m preprocessing.make_tfrecords --voc_root=data/VOC2012 --output_dir=data/tfrecords \
      [--splits=train,val] [--num_shards=N] [--max_rejected_fraction=0.01] [--download] [--with_sbd] \
      [any Beam pipeline option: --runner=DataflowRunner --project=.. --region=.. --temp_location=gs://.. \
       --setup_file=./setup.py, --direct_running_mode=.., --runner=DaskRunner --dask_client_address=tcp://..:8786]
  python -m preprocessing.make_tfrecords --images='camvid/{split}/*.png' --masks='camvid/{split}annot/{stem}.png' \
      --class_names=camvid_classes.txt --void_values=11 --output_dir=data/camvid_tfrecords
  python -m preprocessing.make_tfrecords --pair_lists='camvid/{split}.txt' --reroot=/SegNet/CamVid=camvid ...
  python -m preprocessing.make_tfrecords --images=... --masks=... --colour_table=colours.csv [--label_map=F]

preprocessing/sources.py says how each layout pairs images and masks; preprocessing/mask_encoding.py what masks
may hold (class ids with void values, colours of a table, a label map).

Writes, per split, into output_dir: {split}-00000-of-000NN.tfrecord shards, {split}-rejected.jsonl (one line per
rejected id, with a reason code) and {split}-summary.json (counts, pixels per class); and class_names.txt (with
class_colours.txt where a colour table gave colours). Bad pairs never stop the job; after the pipeline, the
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

from absl import app
from absl import flags

from contracts import console
from contracts import shards
from contracts import voc
from preprocessing import conversion
from preprocessing import download
from preprocessing import split_outputs

# The job's flags live in their own FlagValues, appended to absl's global one (the command line and --help see
# them): `run` parses only these, so another module's required flags (imported in the same process, as in a test
# session) do not break it.
JOB_FLAGS = flags.FlagValues()
flags.DEFINE_string(
  "voc_root",
  None,
  "VOC2012 folder (JPEGImages/, SegmentationClass/, ImageSets/); local or gs://.",
  flag_values=JOB_FLAGS,
)
flags.DEFINE_string(
  "images",
  None,
  "Your own layout: a glob of the photos ('**' descends into sub-folders; "
  "{split} is each split's name), e.g. 'camvid/{split}/*.png'. Goes with --masks.",
  flag_values=JOB_FLAGS,
)
flags.DEFINE_string(
  "masks",
  None,
  "Where each photo's mask is: a template of {split}, {dir} (the photo's folder "
  "below the glob's fixed part), {stem} (what the file name's first * matched) and {name} (the "
  "file name), e.g. 'camvid/{split}annot/{stem}.png' or 'photos/{dir}/{stem}_mask.png'.",
  flag_values=JOB_FLAGS,
)
flags.DEFINE_string(
  "pair_lists",
  None,
  "Your own lists: one file per split of `image mask` lines (paths "
  "relative to the list, or absolute), e.g. 'camvid/{split}.txt'.",
  flag_values=JOB_FLAGS,
)
flags.DEFINE_string(
  "reroot",
  None,
  "OLD=NEW: absolute paths in --pair_lists that start with OLD (another "
  "machine's) are read under NEW instead, e.g. /SegNet/CamVid=data/camvid.",
  flag_values=JOB_FLAGS,
)
flags.DEFINE_list(
  "void_values",
  None,
  "Mask values that mean 'not labelled' (never scored), e.g. 11 for CamVid, 0 where 0 means unlabelled; default 255.",
  flag_values=JOB_FLAGS,
)
flags.DEFINE_string(
  "colour_table",
  None,
  "Colour masks: a text, CSV or JSON file of a name and a colour (r g b) "
  "per class, in class-id order; rows named void/ignore/unlabeled mark void colours. Names the "
  "classes; palette PNGs are read by their colours.",
  flag_values=JOB_FLAGS,
)
flags.DEFINE_string(
  "label_map",
  None,
  "A JSON object or `RAW TARGET` lines: each raw mask value (or colour "
  "r,g,b / #rrggbb) -> a class id, a class name or void. Merges, reorders, drops; a value it "
  "does not name is unknown.",
  flag_values=JOB_FLAGS,
)
flags.DEFINE_bool(
  "unknown_to_void",
  False,
  "A mask value outside the classes (or colour outside the table) "
  "becomes void, counted in the summary, instead of rejecting its pair.",
  flag_values=JOB_FLAGS,
)
flags.DEFINE_string(
  "output_dir", None, "Where the TFRecords, rejected.jsonl and summary.json go; local or gs://.", flag_values=JOB_FLAGS
)
flags.DEFINE_list(
  "splits",
  ["train", "val"],
  "The splits to convert: VOC's lists under ImageSets/Segmentation "
  "(e.g. train_aug), or the names {split} takes in --images / --pair_lists.",
  flag_values=JOB_FLAGS,
)
flags.DEFINE_integer(
  "num_shards", None, "Shards per split; default ceil(ids / 1000), ~100 MB each.", lower_bound=1, flag_values=JOB_FLAGS
)
flags.DEFINE_float(
  "max_rejected_fraction",
  0.01,
  "Exit non-zero (after writing) when more than this fraction of a split's listed ids is rejected.",
  lower_bound=0.0,
  upper_bound=1.0,
  flag_values=JOB_FLAGS,
)
flags.DEFINE_integer(
  "num_classes",
  voc.NUM_CLASSES,
  "Labels must be 0..num_classes-1 or 255; default: the count of the class names when there are some, else VOC's 21.",
  lower_bound=1,
  upper_bound=255,
  flag_values=JOB_FLAGS,
)
flags.DEFINE_string(
  "class_names",
  None,
  f"A text file of the classes' names, one per line, background first; "
  f"default voc_root/{shards.CLASS_NAMES_FILE} when there is one, else VOC's names for 21 "
  f"classes. Written beside the shards as {shards.CLASS_NAMES_FILE}, where training and "
  f"evaluation take them from.",
  flag_values=JOB_FLAGS,
)
flags.DEFINE_bool(
  "download",
  False,
  "Download (or re-extract from a kept archive) VOC2012 into voc_root even "
  "when it has data; without it, only a voc_root with no JPEGImages/ is downloaded into.",
  flag_values=JOB_FLAGS,
)
flags.DEFINE_bool(
  "with_sbd", False, "Add SBD's SegmentationClassAug masks and the train_aug list (downloads).", flag_values=JOB_FLAGS
)
flags.DEFINE_string(
  "download_dir", None, "Where downloaded archives are kept; default downloads/ beside voc_root.", flag_values=JOB_FLAGS
)
flags.DEFINE_string("voc_url", download.VOC_URL, "VOC2012 trainval tar (a mirror may be given).", flag_values=JOB_FLAGS)
flags.DEFINE_string("voc_md5", download.VOC_MD5, "md5 of the VOC tar.", flag_values=JOB_FLAGS)
flags.DEFINE_string("sbd_url", download.SBD_URL, "SBD benchmark.tgz (a mirror may be given).", flag_values=JOB_FLAGS)
flags.DEFINE_string("sbd_md5", download.SBD_MD5, "md5 of the SBD archive.", flag_values=JOB_FLAGS)
console.register_check(
  "splits",
  console.each(console.matching(console.SPLIT)),
  "comma-separated split names of letters, digits, '_', '.' or '-', e.g. train_aug,val",
  flag_values=JOB_FLAGS,
)
for _name in ("voc_url", "sbd_url"):
  console.register_check(
    _name, console.matching(r"(https?|file)://\S+"), "an http(s):// or file:// URL", flag_values=JOB_FLAGS
  )
console.register_check(
  "void_values",
  console.each(lambda v: v.isdigit() and int(v) < 1 << 16),
  "comma-separated mask values 0..65535, e.g. 11 or 0,255",
  flag_values=JOB_FLAGS,
)
for _name in ("voc_md5", "sbd_md5"):
  console.register_check(_name, console.matching(console.MD5), console.MD5_ACCEPTS, flag_values=JOB_FLAGS)
flags.FLAGS.append_flag_values(JOB_FLAGS)
for _name in JOB_FLAGS:
  flags.declare_key_flag(_name)  # listed by --helpshort, as this module's own flags
del _name
FLAGS = JOB_FLAGS


def parse_flags(argv: list[str]) -> list[str]:
  """app.run's flags parser: parses our flags and absl's, returns [argv[0]] + everything else (Beam's options)."""
  rest = console.parse_flags(argv, known_only=True, program="make_tfrecords")
  JOB_FLAGS.mark_as_parsed()  # same Flag objects, parsed through the global FlagValues
  return rest


def run(argv: list[str]) -> dict[str, split_outputs.SplitSummary]:
  """In-process entry point (tests, benchmarks): argv as on the command line, argv[0] included.

  Raises conversion.JobFailed (after writing all it could) or app.UsageError instead of exiting.
  """
  FLAGS.unparse_flags()  # flags from an earlier call in this process must not leak into this one
  try:
    beam_argv = FLAGS(list(argv), known_only=True)
  except flags.Error as e:
    raise app.UsageError(str(e), exitcode=conversion.EXIT_USAGE) from None
  return conversion.convert(_job(), beam_argv[1:])


def _job() -> conversion.Job:
  return conversion.Job(
    voc_root=FLAGS.voc_root,
    images=FLAGS.images,
    masks=FLAGS.masks,
    pair_lists=FLAGS.pair_lists,
    reroot=FLAGS.reroot,
    output_dir=FLAGS.output_dir,
    splits=tuple(FLAGS.splits),
    num_shards=FLAGS.num_shards,
    void_values=None if FLAGS.void_values is None else tuple(int(v) for v in FLAGS.void_values),
    colour_table=FLAGS.colour_table,
    label_map=FLAGS.label_map,
    unknown_to_void=FLAGS.unknown_to_void,
    max_rejected_fraction=FLAGS.max_rejected_fraction,
    num_classes=FLAGS.num_classes if FLAGS["num_classes"].present else None,
    class_names_file=FLAGS.class_names,
    download=FLAGS.download,
    with_sbd=FLAGS.with_sbd,
    download_dir=FLAGS.download_dir,
    voc_url=FLAGS.voc_url,
    voc_md5=FLAGS.voc_md5,
    sbd_url=FLAGS.sbd_url,
    sbd_md5=FLAGS.sbd_md5,
  )


def main(argv: list[str]) -> None:
  conversion.quiet_beam_logging()
  try:
    with console.exit_on_user_error(program="make_tfrecords"):  # conversion.JobFailed, with its exit code.
      conversion.convert(_job(), argv[1:])
  except app.UsageError as e:
    console.exit_with(f"{e} (see --helpfull)", conversion.EXIT_USAGE, program="make_tfrecords")


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
