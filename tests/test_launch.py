"""The launchers as users call them: what each --dry_run would run or submit, and bad flags as one-line errors.

The cloud launchers only build commands and specs here (no gcloud, kubectl or docker runs); the local
multi-worker launcher really runs in test_multiworker_fault.py and below on a bad data folder.
"""

import ast
import json
import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest
import yaml

from launch import tpu_vm

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
TRAINER_FLAGS = [
  "--config=configs/deeplab_voc.py",
  "--config.batch_size=32",
  "--data_dir=gs://bucket/voc/records",
  "--model_dir=gs://bucket/runs/1",
]


def launch(module: str, *args: str, env=None) -> subprocess.CompletedProcess:
  return subprocess.run(
    [sys.executable, "-m", f"launch.{module}", *args],
    cwd=REPO_ROOT,
    capture_output=True,
    text=True,
    timeout=120,
    env=env,
  )


def commands(stdout: str) -> list[list[str]]:
  """The shell commands a launcher printed ("$ ..." lines), split as the shell would."""
  return [shlex.split(line[2:]) for line in stdout.splitlines() if line.startswith("$ ")]


def spec_and_path(stdout: str) -> tuple[dict, str]:
  """The YAML a launcher printed (everything but the commands) and the file it names in its first line."""
  text = "\n".join(line for line in stdout.splitlines() if not line.startswith("$ "))
  return yaml.safe_load(text), stdout.splitlines()[0].removeprefix("# ")


def one_line_error(result: subprocess.CompletedProcess, exit_code: int = 2) -> str:
  assert result.returncode == exit_code, (result.returncode, result.stdout[-2000:], result.stderr[-2000:])
  assert "Traceback" not in result.stderr, result.stderr[-2000:]
  lines = result.stderr.strip().splitlines()
  assert lines and lines[-1].startswith("error: ")
  return lines[-1]


def test_local_workers_dry_run_prints_one_command_per_worker_with_its_tf_config(tmp_path):
  result = launch(
    "local_workers",
    "--num_workers=3",
    "--dry_run",
    "--",
    *TRAINER_FLAGS[:2],
    "--data_dir=data/records",
    f"--model_dir={tmp_path}/run",
  )
  assert result.returncode == 0, result.stderr
  lines = [line for line in result.stdout.splitlines() if not line.startswith("#")]
  assert len(lines) == 3
  clusters = []
  for index, line in enumerate(lines):
    words = shlex.split(line)
    config = json.loads(words[0].removeprefix("TF_CONFIG="))
    assert config["task"] == {"type": "worker", "index": index}
    clusters.append(config["cluster"])
    assert words[1:4] == [sys.executable, "-m", "trainer.main"]
    assert words[4:-2] == [
      *TRAINER_FLAGS[:2],
      "--data_dir=data/records",
      f"--model_dir={tmp_path}/run",
      "--strategy=multi_worker_mirrored",
    ]
    assert words[-2:] == [">>", f"{tmp_path}/run/logs/worker_{index}.log"]
  assert clusters[0] == clusters[1] == clusters[2] and len(set(clusters[0]["worker"])) == 3
  assert not (tmp_path / "run").exists()  # a dry run starts and writes nothing


def test_local_workers_stop_without_restarts_when_a_worker_reports_bad_data(tmp_path):
  """Exit code 2 means a bad flag, config or data: restarting cannot help. The logs keep each worker's output."""
  result = launch(
    "local_workers",
    "--num_workers=2",
    "--max_restarts=3",
    "--",
    "--config=configs/smoke.py",
    f"--data_dir={tmp_path}/empty",
    f"--model_dir={tmp_path}/run",
  )
  error = one_line_error(result)
  assert "bad flag, config or data" in error and f"{tmp_path}/run/logs" in error
  assert "restarting" not in result.stdout
  assert re.search(r"\[worker [01]\] .*no shards for split 'train'", result.stdout), result.stdout[-3000:]
  for index in range(2):
    log = (tmp_path / "run" / "logs" / f"worker_{index}.log").read_text()
    assert log.startswith('=== attempt 1: TF_CONFIG={"cluster": {"worker": ["127.0.0.1:')


@pytest.mark.parametrize(
  "flags, message",
  [
    (["--", "--strategy=mirrored", "--data_dir=d", "--model_dir=m"], "--strategy=mirrored cannot run here"),
    (["--", "--data_dir=d"], "--model_dir is required"),
    (["--model_dir=m"], "flags for the trainer or the conversion go after `--`"),
    (["--num_workers=0", "--", "--model_dir=m"], "num_workers"),
  ],
)
def test_local_workers_bad_flags(flags, message):
  assert message in one_line_error(launch("local_workers", *flags))


def test_tpu_vm_dry_run_creates_copies_installs_and_trains_with_the_tpu_strategy():
  result = launch(
    "tpu_vm",
    "--tpu_name=seg",
    "--zone=us-central2-b",
    "--project=proj",
    "--create",
    "--accelerator_type=v4-8",
    "--dry_run",
    "--",
    *TRAINER_FLAGS,
    "--mixed_precision=mixed_bfloat16",
  )
  assert result.returncode == 0, result.stderr
  create, mkdir, scp, install, train = commands(result.stdout)
  where = ["--zone=us-central2-b", "--project=proj"]
  assert create == [
    "gcloud",
    "compute",
    "tpus",
    "tpu-vm",
    "create",
    "seg",
    *where,
    "--accelerator-type=v4-8",
    "--version=tpu-ubuntu2204-base",
  ]
  assert scp[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"] and "--worker=all" in scp
  copied = scp[6 : scp.index("seg:segmentation/")]
  assert all((REPO_ROOT / path).exists() for path in copied)
  assert {"setup.py", "trainer", "preprocessing", "configs"} <= set(copied)  # what setup.py and --config need
  assert "pip install --quiet ." in install[-1] and "tensorflow-tpu" in install[-1]
  assert "--worker=0" in train
  remote = shlex.split(train[-1].removeprefix("--command="))
  assert remote[:6] == ["cd", "segmentation", "&&", "python3", "-m", "trainer.main"]
  assert remote[6:] == [*TRAINER_FLAGS, "--mixed_precision=mixed_bfloat16", "--strategy=tpu", "--tpu=local"]
  assert mkdir[-1] == "--command=mkdir -p segmentation"


def _install_requires(env_value: str | None) -> list[str]:
  """setup.py's install_requires with SEGMENTATION_TENSORFLOW set to env_value (None: unset)."""
  script = (
    "import runpy, setuptools; setuptools.setup = lambda **kw: print(repr(kw['install_requires'])); "
    "runpy.run_path('setup.py')"
  )
  env = {k: v for k, v in os.environ.items() if k != "SEGMENTATION_TENSORFLOW"}
  if env_value is not None:
    env["SEGMENTATION_TENSORFLOW"] = env_value
  result = subprocess.run(
    [sys.executable, "-c", script], cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=True
  )
  return ast.literal_eval(result.stdout.strip())


def test_setup_py_installs_exactly_one_tensorflow_distribution():
  def tensorflows(requirements):
    return [r for r in requirements if re.match(r"(tensorflow|tf-nightly)(-tpu|-cpu)?(\[.*\])?([<>=~!]|$)", r)]

  assert tensorflows(_install_requires(None)) == ["tensorflow>=2.21,<2.22"]
  assert tensorflows(_install_requires("tensorflow-tpu~=2.21.0")) == ["tensorflow-tpu~=2.21.0"]
  assert tensorflows(_install_requires("")) == []  # The machine's own TensorFlow.


def test_tpu_vm_installs_one_tensorflow_and_checks_it():
  result = launch("tpu_vm", "--tpu_name=seg", "--zone=z", "--dry_run", "--", *TRAINER_FLAGS)
  assert result.returncode == 0, result.stderr
  _, _, install, _ = commands(result.stdout)
  remote = install[-1].removeprefix("--command=")
  assert remote.count("pip install") == 1
  assert "SEGMENTATION_TENSORFLOW='tensorflow-tpu~=2.21.0' python3 -m pip" in remote
  check = remote.rsplit(" && ", 1)[1]
  assert check == tpu_vm.CHECK_ONE_TENSORFLOW
  # The check passes here (one TensorFlow) and names the distributions where there are two.
  assert subprocess.run(shlex.split(check.replace("python3", sys.executable, 1)), capture_output=True).returncode == 0
  two = check.replace(".get('tensorflow', [])", ".get('tensorflow', []) + ['tensorflow-tpu']")
  failed = subprocess.run(shlex.split(two.replace("python3", sys.executable, 1)), capture_output=True, text=True)
  assert failed.returncode == 1 and "TensorFlow distributions: ['tensorflow', 'tensorflow-tpu']" in failed.stderr


def test_tpu_vm_multi_host_slice_runs_one_client_with_the_tpu_name():
  result = launch(
    "tpu_vm",
    "--tpu_name=seg",
    "--zone=z",
    "--create",
    "--accelerator_type=v4-32",
    "--runtime_version=tpu-vm-tf-2.21.0-pod-pjrt",
    "--dry_run",
    "--",
    *TRAINER_FLAGS,
  )
  assert result.returncode == 0, result.stderr
  create, mkdir, scp, install, train = commands(result.stdout)
  assert "--version=tpu-vm-tf-2.21.0-pod-pjrt" in create
  assert all("--worker=all" in command for command in (mkdir, scp, install))  # Every host gets the code.
  assert "SEGMENTATION_TENSORFLOW='' python3 -m pip install --quiet . &&" in install[-1]  # The image's TensorFlow.
  assert "--worker=0" in train
  remote = shlex.split(train[-1].removeprefix("--command="))
  assert remote[:4] == ["cd", "segmentation", "&&", "TPU_LOAD_LIBRARY=0"]
  assert remote[-2:] == ["--strategy=tpu", "--tpu=seg"]
  refused = launch(
    "tpu_vm",
    "--tpu_name=seg",
    "--zone=z",
    "--create",
    "--accelerator_type=v5litepod-16",
    "--dry_run",
    "--",
    *TRAINER_FLAGS,
  )
  assert "pass --runtime_version=tpu-vm-tf-<version>-pod-pjrt" in one_line_error(refused)


@pytest.mark.parametrize(
  "trainer_flags, message",
  [
    (["--data_dir=data/records", "--model_dir=gs://b/run"], "--data_dir=data/records is not on Cloud Storage"),
    (["--data_dir=gs://b/records", "--model_dir=runs/1"], "--model_dir=runs/1 is not on Cloud Storage"),
    (["--data_dir=gs://b/records"], "--model_dir=gs://... is required"),
    ([*TRAINER_FLAGS, "--mixed_precision=mixed_float16"], "use --mixed_precision=mixed_bfloat16"),
    ([*TRAINER_FLAGS, "--strategy=mirrored"], "--strategy=mirrored cannot run here"),
  ],
)
def test_tpu_vm_bad_flags(trainer_flags, message):
  result = launch("tpu_vm", "--tpu_name=seg", "--zone=z", "--dry_run", "--", *trainer_flags)
  assert message in one_line_error(result)


def test_vertex_ai_dry_run_prints_a_chief_pool_and_a_worker_pool_running_the_trainer_image(tmp_path):
  image = "us-central1-docker.pkg.dev/proj/seg/trainer:1"
  result = launch(
    "vertex_ai",
    "--project=proj",
    "--region=us-central1",
    f"--image={image}",
    "--num_workers=4",
    "--accelerator_type=NVIDIA_L4",
    "--accelerator_count=2",
    "--build",
    "--display_name=run-1",
    f"--spec_file={tmp_path}/job.yaml",
    "--dry_run",
    "--",
    *TRAINER_FLAGS,
  )
  assert result.returncode == 0, result.stderr
  spec, path = spec_and_path(result.stdout)
  chief, workers = spec["workerPoolSpecs"]
  assert [chief["replicaCount"], workers["replicaCount"]] == [1, 3]  # Vertex AI: pool 0 chief, pool 1 workers
  for pool in (chief, workers):
    assert pool["containerSpec"] == {"imageUri": image, "args": [*TRAINER_FLAGS, "--strategy=multi_worker_mirrored"]}
    assert pool["machineSpec"] == {
      "machineType": "n1-standard-8",
      "acceleratorType": "NVIDIA_L4",
      "acceleratorCount": 2,
    }
  assert spec["scheduling"] == {"restartJobOnWorkerRestart": True}
  build, push, submit = commands(result.stdout)
  assert build == ["docker", "build", "-f", str(REPO_ROOT / "launch" / "Dockerfile"), "-t", image, str(REPO_ROOT)]
  assert push == ["docker", "push", image]
  assert submit == [
    "gcloud",
    "ai",
    "custom-jobs",
    "create",
    "--project=proj",
    "--region=us-central1",
    "--display-name=run-1",
    f"--config={path}",
  ]
  assert path == f"{tmp_path}/job.yaml" and not os.path.exists(path)  # a dry run writes no spec


@pytest.mark.parametrize(
  "accelerators, strategy",
  [([], "one_device"), (["--accelerator_type=NVIDIA_L4", "--accelerator_count=4"], "mirrored")],
)
def test_vertex_ai_one_machine_is_one_pool_with_the_strategy_for_its_gpus(accelerators, strategy):
  result = launch(
    "vertex_ai", "--project=p", "--region=r", "--image=img", *accelerators, "--dry_run", "--", *TRAINER_FLAGS
  )
  assert result.returncode == 0, result.stderr
  spec, _ = spec_and_path(result.stdout)
  [pool] = spec["workerPoolSpecs"]
  assert pool["replicaCount"] == 1 and pool["containerSpec"]["args"][-1] == f"--strategy={strategy}"
  assert "scheduling" not in spec


@pytest.mark.parametrize(
  "flags, message",
  [
    (["--", "--data_dir=gs://b/d", "--model_dir=/home/me/runs"], "--model_dir=/home/me/runs is not on Cloud Storage"),
    (["--accelerator_type=NVIDIA_L4", "--", *TRAINER_FLAGS], "go together"),
    (["--num_workers=2", "--", *TRAINER_FLAGS, "--strategy=mirrored"], "--strategy=mirrored cannot run here"),
    (["--", *TRAINER_FLAGS, "--mixed_precision=mixed_float16"], "fast only on GPUs"),
  ],
)
def test_vertex_ai_bad_flags(flags, message):
  result = launch("vertex_ai", "--project=p", "--region=r", "--image=img", "--dry_run", *flags)
  assert message in one_line_error(result)


def test_vertex_ai_needs_its_required_flags():
  assert "--image" in one_line_error(
    launch("vertex_ai", "--project=p", "--region=r", "--dry_run", "--", *TRAINER_FLAGS)
  )


def test_gke_dry_run_prints_a_tfjob_of_gpu_workers_and_the_kubectl_command():
  result = launch(
    "gke",
    "--name=seg-4x2",
    "--namespace=ml",
    "--image=img:2",
    "--num_workers=4",
    "--gpus_per_worker=2",
    "--max_restarts=5",
    "--manifest_file=/tmp/seg.yaml",
    "--dry_run",
    "--",
    *TRAINER_FLAGS,
  )
  assert result.returncode == 0, result.stderr
  manifest, path = spec_and_path(result.stdout)
  assert path == "/tmp/seg.yaml" and commands(result.stdout) == [["kubectl", "apply", "-f", "/tmp/seg.yaml"]]
  assert (manifest["apiVersion"], manifest["kind"]) == ("kubeflow.org/v1", "TFJob")
  assert manifest["metadata"] == {"name": "seg-4x2", "namespace": "ml"}
  assert manifest["spec"]["runPolicy"]["backoffLimit"] == 5
  workers = manifest["spec"]["tfReplicaSpecs"]["Worker"]  # the operator writes each pod's TF_CONFIG from this
  assert workers["replicas"] == 4 and workers["restartPolicy"] == "OnFailure"
  [container] = workers["template"]["spec"]["containers"]
  assert container == {
    "name": "tensorflow",
    "image": "img:2",
    "args": [*TRAINER_FLAGS, "--strategy=multi_worker_mirrored"],
    "resources": {"limits": {"nvidia.com/gpu": 2}},
  }


def test_gke_without_kubectl_is_a_one_line_error_after_writing_the_manifest(tmp_path):
  manifest = tmp_path / "job.yaml"
  result = launch(
    "gke", "--image=img", f"--manifest_file={manifest}", "--", *TRAINER_FLAGS, env=dict(os.environ, PATH=str(tmp_path))
  )
  assert "kubectl is not installed" in one_line_error(result, exit_code=1)
  assert yaml.safe_load(manifest.read_text())["kind"] == "TFJob"


def test_vertex_ai_without_gcloud_is_a_one_line_error(tmp_path):
  result = launch(
    "vertex_ai",
    "--project=p",
    "--region=r",
    "--image=img",
    f"--spec_file={tmp_path}/job.yaml",
    "--",
    *TRAINER_FLAGS,
    env=dict(os.environ, PATH=str(tmp_path)),
  )
  assert "gcloud is not installed" in one_line_error(result, exit_code=1)


def test_dataflow_dry_run_prints_the_conversion_with_dataflow_options():
  conversion = ["--voc_root=gs://b/VOC2012", "--output_dir=gs://b/records", "--splits=train_aug,val", "--num_shards=16"]
  result = launch(
    "dataflow",
    "--project=proj",
    "--region=europe-west4",
    "--temp_location=gs://b/tmp",
    "--max_num_workers=8",
    "--job_name=voc",
    "--dry_run",
    "--",
    *conversion,
  )
  assert result.returncode == 0, result.stderr
  [command] = commands(result.stdout)
  assert command[:3] == [sys.executable, "-m", "preprocessing.make_tfrecords"]
  assert command[3:] == [
    *conversion,
    "--runner=DataflowRunner",
    "--project=proj",
    "--region=europe-west4",
    "--temp_location=gs://b/tmp",
    f"--setup_file={REPO_ROOT / 'setup.py'}",
    "--max_num_workers=8",
    "--job_name=voc",
  ]
  assert (REPO_ROOT / "setup.py").exists()


@pytest.mark.parametrize(
  "flags, message",
  [
    (
      ["--temp_location=gs://b/t", "--", "--voc_root=data/VOC2012", "--output_dir=gs://b/r"],
      "--voc_root=data/VOC2012 is not on Cloud Storage",
    ),
    (["--temp_location=/tmp", "--", "--voc_root=gs://b/v", "--output_dir=gs://b/r"], "--temp_location=/tmp"),
    (
      ["--temp_location=gs://b/t", "--", "--voc_root=gs://b/v", "--output_dir=gs://b/r", "--runner=DirectRunner"],
      "--runner=DirectRunner cannot run here",
    ),
    (
      ["--temp_location=gs://b/t", "--", "--voc_root=gs://b/v", "--output_dir=gs://b/r", "--project=other"],
      "--project is a launcher flag",
    ),
    (
      [
        "--temp_location=gs://b/t",
        "--",
        "--images=gs://b/{split}/*.png",
        "--masks=ann/{stem}.png",
        "--output_dir=gs://b/r",
      ],
      "--masks=ann/{stem}.png is not on Cloud Storage",
    ),
    (
      ["--temp_location=gs://b/t", "--", "--pair_lists=lists/{split}.txt", "--output_dir=gs://b/r"],
      "--pair_lists=lists/{split}.txt is not on Cloud Storage",
    ),
  ],
)
def test_dataflow_bad_flags(flags, message):
  result = launch("dataflow", "--project=p", "--region=r", "--dry_run", *flags)
  assert message in one_line_error(result)


def test_the_dockerfile_copies_every_package_setup_py_installs_and_runs_the_trainer():
  dockerfile = (REPO_ROOT / "launch" / "Dockerfile").read_text()
  copied = {line.split()[1].rstrip("/") for line in dockerfile.splitlines() if line.startswith("COPY ")}
  # Not tests/ nor benchmarks/: setup.py installs neither, and a training image runs neither.
  packages = {path.parent.name for path in REPO_ROOT.glob("*/__init__.py")} - {"tests", "benchmarks"}
  assert {"setup.py", *packages} <= copied and all((REPO_ROOT / path).exists() for path in copied)
  kept = {
    line[1:].rstrip("/")
    for line in (REPO_ROOT / "launch" / "Dockerfile.dockerignore").read_text().splitlines()
    if line.startswith("!")
  }
  assert copied <= kept  # the build context holds what is copied
  entrypoint = [line for line in dockerfile.splitlines() if line.startswith("ENTRYPOINT")]
  assert json.loads(entrypoint[0].removeprefix("ENTRYPOINT")) == ["python", "-m", "trainer.main"]
