r"""The conversion to TFRecords on Google Cloud Dataflow (the same Beam job as on this machine).

  python -m launch.dataflow --project=my-project --region=us-central1 \
      --temp_location=gs://BUCKET/dataflow-tmp --max_num_workers=8 --dry_run -- \
      --voc_root=gs://BUCKET/voc/VOC2012 --output_dir=gs://BUCKET/voc/tfrecords --splits=train_aug,val

Runs `python -m preprocessing.make_tfrecords ... --runner=DataflowRunner --setup_file=SETUP.py` here; the
job is submitted from this machine and waits for its end (the conversion then counts the written records).
--setup_file ships this project to the Dataflow workers, which pip-install it with its dependencies. The
workers read the data and write the shards through Cloud Storage, so the data's flag (--voc_root, --images and
--masks, or --pair_lists, whose lines must then name gs:// files, directly or through --reroot), --output_dir and
--temp_location must be gs:// paths. The conversion's own flags go after `--`, e.g. --num_shards (default:
about 1,000 pairs, ~100 MB, per shard).
"""

import os
import sys

from absl import app
from absl import flags

from contracts import console
from launch import common

_PROJECT = flags.DEFINE_string("project", None, "Google Cloud project.", required=True)
_REGION = flags.DEFINE_string("region", None, "Dataflow region, e.g. us-central1.", required=True)
_TEMP_LOCATION = flags.DEFINE_string(
  "temp_location", None, "gs:// folder for Dataflow's temporary and staged files.", required=True
)
_JOB_NAME = flags.DEFINE_string("job_name", None, "Dataflow job name; default Beam's (user + time).")
_MAX_NUM_WORKERS = flags.DEFINE_integer("max_num_workers", 4, "Upper bound for Dataflow's autoscaling.", lower_bound=1)
_MACHINE_TYPE = flags.DEFINE_string("machine_type", None, "Worker machine type; default Dataflow's.")
console.register_check("temp_location", lambda path: path.startswith("gs://"), "a gs:// folder (Dataflow stages there)")
console.register_check(
  "job_name",
  console.matching(r"[a-z]([-a-z0-9]*[a-z0-9])?"),
  "a Dataflow job name: lower-case letters, digits and '-', a letter first, no '-' last",
)
console.register_check("machine_type", console.matching(common.MACHINE_TYPE), common.MACHINE_TYPE_ACCEPTS)


def command(conversion_args: list[str]) -> list[str]:
  data = [name for name in ("voc_root", "images", "pair_lists") if common.flag_value(conversion_args, name)]
  data = data or ["voc_root"]  # what is missing, named after the usual case
  common.require_gcs(conversion_args, (*data, *(["masks"] if "images" in data else []), "output_dir"), "Dataflow")
  if common.flag_value(conversion_args, "direct_running_mode") is not None:
    raise common.LaunchError("--direct_running_mode is for the DirectRunner, not Dataflow")
  args = common.with_flag(conversion_args, "runner", "DataflowRunner")
  beam = [
    f"--project={_PROJECT.value}",
    f"--region={_REGION.value}",
    f"--temp_location={_TEMP_LOCATION.value}",
    f"--setup_file={os.path.join(common.REPO_ROOT, 'setup.py')}",
    f"--max_num_workers={_MAX_NUM_WORKERS.value}",
  ]
  if _JOB_NAME.value:
    beam.append(f"--job_name={_JOB_NAME.value}")
  if _MACHINE_TYPE.value:
    beam.append(f"--worker_machine_type={_MACHINE_TYPE.value}")
  for option in beam:
    name = option[2:].split("=", 1)[0]
    if common.flag_value(args, name) is not None:
      raise common.LaunchError(f"--{name} is a launcher flag: give it before `--`")
  return [sys.executable, "-m", "preprocessing.make_tfrecords", *args, *beam]


def main(argv):
  with console.exit_on_user_error():  # common.LaunchError
    common.run_commands([command(argv[1:])], dry_run=common.DRY_RUN.value)


if __name__ == "__main__":
  app.run(main, flags_parser=common.parse_flags)
