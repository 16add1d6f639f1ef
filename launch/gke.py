r"""Multi-node (GPU) training on Kubernetes, e.g. GKE: a Kubeflow TFJob of N workers from launch/Dockerfile.

  python -m launch.gke --name=deeplab-4x2 --image=us-docker.pkg.dev/my-project/seg/trainer:1 --build \
      --num_workers=4 --gpus_per_worker=2 --dry_run -- \
      --config=configs/deeplab_voc.py --config.batch_size=64 --mixed_precision=mixed_float16 \
      --data_dir=gs://BUCKET/voc/tfrecords --model_dir=gs://BUCKET/runs/gke1

Writes the TFJob manifest (YAML) and applies it with `kubectl apply -f MANIFEST` (the cluster needs the
Kubeflow training operator); with --build, first builds and pushes the image. The operator gives each
worker pod its TF_CONFIG (worker 0 is the chief); the flags after `--` are the container's arguments, with
--strategy=multi_worker_mirrored. When a worker dies, its peers fail within seconds (TensorFlow's
coordination service misses its heartbeats), every failed pod is restarted (restartPolicy OnFailure, up to
--max_restarts times in all) and training resumes from the last loop checkpoint. The pods share nothing but
Cloud Storage, so --data_dir and --model_dir must be gs:// paths (give the pods' service account access).

Without Kubernetes, the same program runs on any machines: start `python -m trainer.main
--strategy=multi_worker_mirrored ...` on each with TF_CONFIG naming all of them (launch/local_workers.py
does this on one machine).
"""

from absl import app
from absl import flags

from contracts import console
from launch import common

_NAME = flags.DEFINE_string("name", "deeplab-training", "TFJob name (lower case, digits and '-').")
_NAMESPACE = flags.DEFINE_string("namespace", "default", "Kubernetes namespace.")
_IMAGE = flags.DEFINE_string("image", None, "Training image URI.", required=True)
_BUILD = flags.DEFINE_bool("build", False, "Build launch/Dockerfile into --image and push it first.")
_NUM_WORKERS = flags.DEFINE_integer("num_workers", 2, "Worker pods.", lower_bound=1)
_GPUS_PER_WORKER = flags.DEFINE_integer("gpus_per_worker", 1, "nvidia.com/gpu per pod (0 for CPU).", lower_bound=0)
_MAX_RESTARTS = flags.DEFINE_integer("max_restarts", 3, "Pod restarts before the job is marked failed.", lower_bound=0)
_MANIFEST_FILE = flags.DEFINE_string("manifest_file", None, "Where the manifest is written; default TMP/NAME.yaml.")
console.register_check(
  "name", console.matching(common.KUBERNETES_NAME), f"a TFJob name: {common.KUBERNETES_NAME_ACCEPTS}"
)
console.register_check("namespace", console.matching(common.KUBERNETES_NAME), common.KUBERNETES_NAME_ACCEPTS)
console.register_check("image", console.matching(common.IMAGE), common.IMAGE_ACCEPTS)


def manifest(trainer_args: list[str]) -> dict:
  common.require_gcs(trainer_args, ("data_dir", "model_dir"), "a Kubernetes job")
  args = common.with_flag(trainer_args, "strategy", "multi_worker_mirrored")
  # The operator wants the container named "tensorflow".
  container: dict[str, object] = {"name": "tensorflow", "image": _IMAGE.value, "args": args}
  if _GPUS_PER_WORKER.value:
    container["resources"] = {"limits": {"nvidia.com/gpu": _GPUS_PER_WORKER.value}}
  return {
    "apiVersion": "kubeflow.org/v1",
    "kind": "TFJob",
    "metadata": {"name": _NAME.value, "namespace": _NAMESPACE.value},
    "spec": {
      "runPolicy": {"backoffLimit": _MAX_RESTARTS.value, "cleanPodPolicy": "Running"},
      "tfReplicaSpecs": {
        "Worker": {
          "replicas": _NUM_WORKERS.value,
          "restartPolicy": "OnFailure",
          "template": {"spec": {"containers": [container]}},
        }
      },
    },
  }


def main(argv):
  with console.exit_on_user_error():  # common.LaunchError
    spec = manifest(argv[1:])
    path = common.spec_path(_MANIFEST_FILE.value, _NAME.value)
    build = common.image_commands(_IMAGE.value) if _BUILD.value else []
    common.submit(spec, path, [*build, ["kubectl", "apply", "-f", path]], dry_run=common.DRY_RUN.value)


if __name__ == "__main__":
  app.run(main, flags_parser=common.parse_flags)
