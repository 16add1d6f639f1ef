r"""Training on a Cloud TPU VM: copies the project there, installs it, runs `trainer.main --strategy=tpu`.

  python -m launch.tpu_vm --tpu_name=seg-v4 --zone=us-central2-b --project=my-project --create --dry_run -- \
      --config=configs/deeplab_voc.py --config.batch_size=64 --mixed_precision=mixed_bfloat16 \
      --data_dir=gs://BUCKET/voc/tfrecords --model_dir=gs://BUCKET/runs/tpu1

The commands are `gcloud compute tpus tpu-vm create` (with --create), `... scp` of the sources (setup.py and
the packages) to every host, `... ssh --command` that pip-installs the project on every host with exactly one
TensorFlow distribution (setup.py's SEGMENTATION_TENSORFLOW: tensorflow-tpu, not also the plain wheel; the
install fails if two are found), and one that starts the trainer with `--strategy=tpu`. The TPU reads the data
and writes checkpoints through Cloud Storage, so --data_dir and --model_dir must be gs:// paths (in the TPU's
region, for speed). A run that is stopped or preempted resumes from its last loop checkpoint when the same
command is run again.

Single-host slices (v2-8, v3-8, v4-8, v5litepod-8: at most 8 in the type's name) train on their host with
`--tpu=local`. TensorFlow drives a multi-host slice (v4-16 and up) from one client: worker 0 runs the trainer
with `--tpu=NAME` and TPU_LOAD_LIBRARY=0, and the other hosts serve their TPUs through the TPU runtime of a
TensorFlow pod image (--runtime_version=tpu-vm-tf-<version>-pod-pjrt), whose TensorFlow the install keeps.
"""

from absl import app
from absl import flags

from contracts import console
from launch import common

_TPU_NAME = flags.DEFINE_string("tpu_name", None, "TPU VM name.", required=True)
_ZONE = flags.DEFINE_string("zone", None, "Zone of the TPU VM, e.g. us-central2-b.", required=True)
_PROJECT = flags.DEFINE_string("project", None, "Google Cloud project; default gcloud's configured one.")
_CREATE = flags.DEFINE_bool("create", False, "Create the TPU VM first.")
_ACCELERATOR_TYPE = flags.DEFINE_string(
  "accelerator_type",
  "v4-8",
  "TPU type: created with --create; also what "
  "tells a single-host slice from a multi-host one, so give it for an existing "
  "TPU too.",
)
_RUNTIME_VERSION = flags.DEFINE_string(
  "runtime_version",
  None,
  "TPU VM software version for --create. Default: tpu-ubuntu2204-base on a single "
  "host (the project's install brings TensorFlow); a multi-host slice needs a TensorFlow pod image, "
  "tpu-vm-tf-<version>-pod-pjrt, given here.",
)
_TENSORFLOW = flags.DEFINE_string(
  "tensorflow",
  None,
  "The TensorFlow requirement installed with the project (setup.py's SEGMENTATION_TENSORFLOW). "
  "Default: tensorflow-tpu~=2.21.0 on a single host; '' (the image's own TensorFlow) on a multi-host slice.",
)
_FIND_LINKS = flags.DEFINE_string(
  "find_links",
  "https://storage.googleapis.com/libtpu-tf-releases/index.html",
  "pip --find-links for tensorflow-tpu's libtpu.",
)
_REMOTE_DIR = flags.DEFINE_string("remote_dir", "segmentation", "Folder on the VM (under the home) for the code.")
console.register_check(
  "tpu_name", console.matching(common.RESOURCE_NAME), f"a TPU VM name: {common.RESOURCE_NAME_ACCEPTS}"
)
console.register_check(
  "accelerator_type",
  console.matching(r"v[0-9]+[a-z]*-[0-9]+"),
  "a TPU type such as v4-8 or v5litepod-16 (version-cores or version-chips)",
)
console.register_check(
  "remote_dir",
  console.matching(r"[\w./~-]+"),
  "a folder of letters, digits and _ . / ~ - (it goes into the remote shell commands as it is)",
)

SOURCES = ("setup.py", "contracts", "deeplab", "preprocessing", "trainer", "inference", "configs", "launch")
SINGLE_HOST_TPU_TENSORFLOW = "tensorflow-tpu~=2.21.0"
SINGLE_HOST_RUNTIME = "tpu-ubuntu2204-base"
# After the install: exactly one installed distribution provides the `tensorflow` module.
CHECK_ONE_TENSORFLOW = (
  'python3 -c "import importlib.metadata as m, sys; d = sorted(set(m.packages_distributions()'
  ".get('tensorflow', []))); len(d) == 1 or sys.exit(f'TensorFlow distributions: {d}')\""
)


def is_multi_host(accelerator_type: str) -> bool:
  """v4-32, v5litepod-16, ...: more than the 8 cores (v2-v5p) or 8 chips (v5e, v6e) one host carries."""
  return int(accelerator_type.rsplit("-", 1)[1]) > 8


def commands(trainer_args: list[str]) -> list[list[str]]:
  common.require_gcs(trainer_args, ("data_dir", "model_dir"), "a TPU")
  if common.flag_value(trainer_args, "mixed_precision") == "mixed_float16":
    raise common.LaunchError(
      "--mixed_precision=mixed_float16 is for GPUs: TPUs compute in bfloat16, use --mixed_precision=mixed_bfloat16"
    )
  multi_host = is_multi_host(_ACCELERATOR_TYPE.value)
  runtime = _RUNTIME_VERSION.value or ("" if multi_host else SINGLE_HOST_RUNTIME)
  if multi_host and _CREATE.value and "-pod" not in runtime:
    raise common.LaunchError(
      f"--accelerator_type={_ACCELERATOR_TYPE.value} is a multi-host slice: TensorFlow reaches its other hosts "
      f"through a TensorFlow pod image's TPU runtime; pass --runtime_version=tpu-vm-tf-<version>-pod-pjrt"
    )
  tensorflow = (
    _TENSORFLOW.value if _TENSORFLOW.value is not None else ("" if multi_host else SINGLE_HOST_TPU_TENSORFLOW)
  )
  args = common.with_flag(trainer_args, "strategy", "tpu")
  if common.flag_value(args, "tpu") is None:
    args.append(f"--tpu={_TPU_NAME.value}" if multi_host else "--tpu=local")
  where = [f"--zone={_ZONE.value}"] + ([f"--project={_PROJECT.value}"] if _PROJECT.value else [])
  gcloud = ["gcloud", "compute", "tpus", "tpu-vm"]
  remote = _REMOTE_DIR.value
  result = []
  if _CREATE.value:
    result.append(
      [
        *gcloud,
        "create",
        _TPU_NAME.value,
        *where,
        f"--accelerator-type={_ACCELERATOR_TYPE.value}",
        f"--version={runtime}",
      ]
    )
  result.append([*gcloud, "ssh", _TPU_NAME.value, *where, "--worker=all", f"--command=mkdir -p {remote}"])
  result.append([*gcloud, "scp", "--recurse", *SOURCES, f"{_TPU_NAME.value}:{remote}/", *where, "--worker=all"])
  find_links = f" -f {_FIND_LINKS.value}" if tensorflow and _FIND_LINKS.value else ""
  install = (
    f"cd {remote} && SEGMENTATION_TENSORFLOW={common.printable([tensorflow])} python3 -m pip install "
    f"--quiet .{find_links} && {CHECK_ONE_TENSORFLOW}"
  )
  train = (
    f"cd {remote} && {'TPU_LOAD_LIBRARY=0 ' if multi_host else ''}python3 -m trainer.main {common.printable(args)}"
  )
  result.append([*gcloud, "ssh", _TPU_NAME.value, *where, "--worker=all", f"--command={install}"])
  result.append([*gcloud, "ssh", _TPU_NAME.value, *where, "--worker=0", f"--command={train}"])
  return result


def main(argv):
  with console.exit_on_user_error():  # common.LaunchError
    planned = commands(argv[1:])
    common.run_commands(planned, dry_run=common.DRY_RUN.value)


if __name__ == "__main__":
  app.run(main, flags_parser=common.parse_flags)
