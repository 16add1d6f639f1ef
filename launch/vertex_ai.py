r"""Training as a Vertex AI custom job: the image from launch/Dockerfile, one worker pool per role.

  python -m launch.vertex_ai --project=my-project --region=us-central1 \
      --image=us-central1-docker.pkg.dev/my-project/seg/trainer:1 --build \
      --num_workers=2 --machine_type=n1-standard-8 --accelerator_type=NVIDIA_TESLA_T4 --accelerator_count=2 \
      --dry_run -- --config=configs/deeplab_voc.py --config.batch_size=32 --mixed_precision=mixed_float16 \
      --data_dir=gs://BUCKET/voc/tfrecords --model_dir=gs://BUCKET/runs/vertex1

Writes the CustomJob spec (YAML) and submits it with `gcloud ai custom-jobs create --config=SPEC`; with
--build, first builds and pushes the image. The flags after `--` become the container's arguments (its
entrypoint is `python -m trainer.main`). Vertex AI sets TF_CONFIG in each replica from the pools: pool 0 is
the chief (1 replica), pool 1 the other --num_workers - 1 workers. The strategy follows from the shape:
multi_worker_mirrored for several workers, mirrored for several GPUs in one, else one_device. A worker that
restarts restarts the whole job (restartJobOnWorkerRestart), which resumes from the last loop checkpoint.
"""

from typing import Any

from absl import app
from absl import flags

from contracts import console
from launch import common

_PROJECT = flags.DEFINE_string("project", None, "Google Cloud project.", required=True)
_REGION = flags.DEFINE_string("region", None, "Vertex AI region, e.g. us-central1.", required=True)
_IMAGE = flags.DEFINE_string("image", None, "Training image URI (Artifact Registry).", required=True)
_BUILD = flags.DEFINE_bool("build", False, "Build launch/Dockerfile into --image and push it first.")
_DISPLAY_NAME = flags.DEFINE_string("display_name", "deeplab-training", "Job name in the console.")
_NUM_WORKERS = flags.DEFINE_integer("num_workers", 1, "Machines (the chief included).", lower_bound=1)
_MACHINE_TYPE = flags.DEFINE_string("machine_type", "n1-standard-8", "Compute Engine machine type of each worker.")
_ACCELERATOR_TYPE = flags.DEFINE_string("accelerator_type", None, "GPU type, e.g. NVIDIA_TESLA_T4, NVIDIA_L4.")
_ACCELERATOR_COUNT = flags.DEFINE_integer("accelerator_count", 0, "GPUs per worker.", lower_bound=0)
_SPEC_FILE = flags.DEFINE_string("spec_file", None, "Where the job spec is written; default TMP/DISPLAY_NAME.yaml.")
console.register_check("image", console.matching(common.IMAGE), common.IMAGE_ACCEPTS)
console.register_check(
  "display_name",
  lambda name: 0 < len(name) <= 128 and name.strip() == name,
  "a job name of 1 to 128 characters, without spaces at either end",
)
console.register_check("machine_type", console.matching(common.MACHINE_TYPE), common.MACHINE_TYPE_ACCEPTS)
console.register_check(
  "accelerator_type",
  console.matching(r"[A-Z][A-Z0-9_]*"),
  "a Vertex AI accelerator type such as NVIDIA_L4 or NVIDIA_TESLA_T4",
)


def strategy_for(num_workers: int, gpus_per_worker: int) -> str:
  if num_workers > 1:
    return "multi_worker_mirrored"
  return "mirrored" if gpus_per_worker > 1 else "one_device"


def job_spec(trainer_args: list[str]) -> dict:
  common.require_gcs(trainer_args, ("data_dir", "model_dir"), "Vertex AI")
  if bool(_ACCELERATOR_TYPE.value) != bool(_ACCELERATOR_COUNT.value):
    raise common.LaunchError("--accelerator_type and --accelerator_count go together (GPUs need both)")
  if common.flag_value(trainer_args, "mixed_precision") == "mixed_float16" and not _ACCELERATOR_COUNT.value:
    raise common.LaunchError(
      "--mixed_precision=mixed_float16 is fast only on GPUs: add --accelerator_type and "
      "--accelerator_count, or train in float32"
    )
  args = common.with_flag(trainer_args, "strategy", strategy_for(_NUM_WORKERS.value, _ACCELERATOR_COUNT.value))
  machine: dict[str, object] = {"machineType": _MACHINE_TYPE.value}
  if _ACCELERATOR_COUNT.value:
    machine.update(acceleratorType=_ACCELERATOR_TYPE.value, acceleratorCount=_ACCELERATOR_COUNT.value)

  def pool(replicas: int) -> dict:
    return {
      "machineSpec": dict(machine),
      "replicaCount": replicas,
      "containerSpec": {"imageUri": _IMAGE.value, "args": list(args)},
    }

  spec: dict[str, Any] = {"workerPoolSpecs": [pool(1)]}
  if _NUM_WORKERS.value > 1:
    spec["workerPoolSpecs"].append(pool(_NUM_WORKERS.value - 1))
    spec["scheduling"] = {"restartJobOnWorkerRestart": True}
  return spec


def main(argv):
  with console.exit_on_user_error():  # common.LaunchError
    spec = job_spec(argv[1:])
    path = common.spec_path(_SPEC_FILE.value, _DISPLAY_NAME.value)
    submit = [
      "gcloud",
      "ai",
      "custom-jobs",
      "create",
      f"--project={_PROJECT.value}",
      f"--region={_REGION.value}",
      f"--display-name={_DISPLAY_NAME.value}",
      f"--config={path}",
    ]
    build = common.image_commands(_IMAGE.value) if _BUILD.value else []
    common.submit(spec, path, [*build, submit], dry_run=common.DRY_RUN.value)


if __name__ == "__main__":
  app.run(main, flags_parser=common.parse_flags)
