r"""Training on a Cloud TPU VM: copies the project there, installs it, runs `trainer.main --strategy=tpu`.

  python -m launch.tpu_vm --tpu_name=seg-v4 --zone=us-central2-b --project=my-project --create --dry_run -- \
      --config=configs/deeplab_voc.py --config.batch_size=64 --mixed_precision=mixed_bfloat16 \
      --data_dir=gs://BUCKET/voc/tfrecords --model_dir=gs://BUCKET/runs/tpu1

The commands are `gcloud compute tpus tpu-vm create` (with --create), `... scp` of the sources (setup.py and
the packages), and `... ssh --command` that pip-installs the project and starts the trainer on the VM with
`--strategy=tpu --tpu=local`. The TPU reads the data and writes checkpoints through Cloud Storage, so
--data_dir and --model_dir must be gs:// paths (in the TPU's region, for speed). A run that is stopped or
preempted resumes from its last loop checkpoint when the same command is run again.
Single-host slices (v2-8, v3-8, v4-8, v5litepod-8) run as is; a multi-host slice needs --tpu=NAME instead of
local, passed after `--`.
"""

from absl import app
from absl import flags

from launch import common

_TPU_NAME = flags.DEFINE_string("tpu_name", None, "TPU VM name.", required=True)
_ZONE = flags.DEFINE_string("zone", None, "Zone of the TPU VM, e.g. us-central2-b.", required=True)
_PROJECT = flags.DEFINE_string("project", None, "Google Cloud project; default gcloud's configured one.")
_CREATE = flags.DEFINE_bool("create", False, "Create the TPU VM first.")
_ACCELERATOR_TYPE = flags.DEFINE_string("accelerator_type", "v4-8", "TPU type for --create.")
_RUNTIME_VERSION = flags.DEFINE_string("runtime_version", "tpu-ubuntu2204-base", "TPU VM software version for "
                                       "--create; the project's pip install brings TensorFlow.")
_TPU_PIP_ARGS = flags.DEFINE_string(
    "tpu_pip_args", "tensorflow-tpu~=2.21.0 -f https://storage.googleapis.com/libtpu-tf-releases/index.html",
    "pip install arguments for TensorFlow's TPU build (with libtpu), installed on the VM after the project.")
_REMOTE_DIR = flags.DEFINE_string("remote_dir", "segmentation", "Folder on the VM (under the home) for the code.")

SOURCES = ("setup.py", "preprocessing", "trainer", "configs", "launch")


def commands(trainer_args: list[str]) -> list[list[str]]:
  common.require_gcs(trainer_args, ("data_dir", "model_dir"), "a TPU")
  if common.flag_value(trainer_args, "mixed_precision") == "mixed_float16":
    raise common.LaunchError("--mixed_precision=mixed_float16 is for GPUs: TPUs compute in bfloat16, "
                             "use --mixed_precision=mixed_bfloat16")
  args = common.with_flag(trainer_args, "strategy", "tpu")
  if common.flag_value(args, "tpu") is None:
    args.append("--tpu=local")
  where = [f"--zone={_ZONE.value}"] + ([f"--project={_PROJECT.value}"] if _PROJECT.value else [])
  gcloud = ["gcloud", "compute", "tpus", "tpu-vm"]
  remote = _REMOTE_DIR.value
  result = []
  if _CREATE.value:
    result.append([*gcloud, "create", _TPU_NAME.value, *where, f"--accelerator-type={_ACCELERATOR_TYPE.value}",
                   f"--version={_RUNTIME_VERSION.value}"])
  result.append([*gcloud, "ssh", _TPU_NAME.value, *where, "--worker=all", f"--command=mkdir -p {remote}"])
  result.append([*gcloud, "scp", "--recurse", *SOURCES, f"{_TPU_NAME.value}:{remote}/", *where, "--worker=all"])
  install = f"cd {remote} && python3 -m pip install --quiet . && python3 -m pip install --quiet {_TPU_PIP_ARGS.value}"
  train = f"cd {remote} && python3 -m trainer.main {common.printable(args)}"
  result.append([*gcloud, "ssh", _TPU_NAME.value, *where, "--worker=all", f"--command={install}"])
  result.append([*gcloud, "ssh", _TPU_NAME.value, *where, "--worker=0", f"--command={train}"])
  return result


def main(argv):
  try:
    planned = commands(argv[1:])
    common.run_commands(planned, dry_run=common.DRY_RUN.value)
  except common.LaunchError as error:
    common.fail(str(error), error.exit_code)


if __name__ == "__main__":
  app.run(main, flags_parser=common.parse_flags)
