"""The trainer as users run it: every CPU-capable strategy, mixed precision, resume after SIGKILL, errors."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from configs import smoke
from contracts import schema
from contracts import voc
from launch import local_workers
from tests.conftest import convert_generated_voc
from trainer import distribute
from trainer import train

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> str:
  """Generated VOC-format pairs converted by the real Beam job: 16 train, 8 val, 96x128."""
  return convert_generated_voc(tmp_path_factory, num_train=16, num_val=8, height=96, width=128)


def tiny_config(**train_fields):
  config = smoke.get_config()
  config.model.alpha = 0.35
  config.input.crop_size = 64
  config.input.eval_pad_to = 128
  config.batch_size = 4
  config.eval_batch_size = 4
  config.train.num_triptychs = 1
  config.train.update(train_fields)
  return config


def trainer_command(data_dir, model_dir, *flags):
  return [
    sys.executable,
    "-m",
    "trainer.main",
    "--config=configs/smoke.py",
    f"--data_dir={data_dir}",
    f"--model_dir={model_dir}",
    "--config.model.alpha=0.35",
    "--config.input.crop_size=64",
    "--config.input.eval_pad_to=128",
    "--config.train.num_triptychs=1",
    *flags,
  ]


def run_trainer(data_dir, model_dir, *flags, env=None, timeout=300) -> subprocess.CompletedProcess:
  return subprocess.run(
    trainer_command(data_dir, model_dir, *flags),
    cwd=REPO_ROOT,
    capture_output=True,
    text=True,
    timeout=timeout,
    env=env,
  )


@pytest.mark.parametrize("strategy_name", ["default", "one_device"])
def test_training_in_process_writes_checkpoints_summaries_and_metrics(records, tmp_path, strategy_name):
  config = tiny_config(epochs=2)
  report = train.train_and_evaluate(
    config, data_dir=records, model_dir=str(tmp_path), strategy=distribute.create_strategy(strategy_name)
  )
  assert report["steps"] == 2 * 4  # 16 examples / batch 4, two epochs
  written = json.loads((tmp_path / "metrics.json").read_text())
  assert 0.0 <= written["miou"] <= 1.0 and written["valid_pixels"] == _valid_pixels(records, "val")
  assert set(written["per_class_iou"]) == set(voc.CLASS_NAMES)
  assert (tmp_path / "checkpoints" / "best.weights.h5").exists()

  # --mode=eval on the finished run scores the same weights the same way.
  again = train.evaluate_checkpoint(
    config, data_dir=records, model_dir=str(tmp_path), strategy=distribute.create_strategy(strategy_name)
  )
  # The same weights (restored bit for bit) through the same kernels on the same images: the same classes.
  assert again["miou"] == pytest.approx(written["miou"]) and again["weights"] == written["weights"]


def test_tensorboard_has_one_step_axis_sections_config_and_hparams(records, tmp_path):
  config = tiny_config(epochs=3, log_every_steps=2)  # 4 steps a loop: training scalars at steps 2, 4, 6, ...
  config.train.num_triptychs = 2
  report = train.train_and_evaluate(
    config, data_dir=records, model_dir=str(tmp_path), strategy=distribute.create_strategy("default")
  )
  series = _summaries(tmp_path)
  assert not list(tmp_path.glob("*/events.out.tfevents.*")), "one event stream, in the run's folder"
  assert not [tag for tag in series if tag.startswith(("epoch_", "evaluation_", "batch_"))], sorted(series)
  assert [step for step, _ in series["train/loss"]] == [2, 4, 6, 8, 10, 12]
  assert [step for step, _ in series["train/learning_rate"]] == [2, 4, 6, 8, 10, 12]
  # Timed from the end of each loop's first execution (which holds the run's compilation), so still at every point.
  assert [step for step, _ in series["train/images_per_second"]] == [2, 4, 6, 8, 10, 12]
  assert all(value > 0 for _, value in series["train/images_per_second"])
  for tag in (
    "validation/loss",
    "validation/miou",
    "validation/pixel_accuracy",
    "train/miou",
    "validation/confusion_matrix",
    "validation/confusion_table",
    "validation/triptych/0",
    "validation/triptych/1",
  ):
    assert [step for step, _ in series[tag]] == [4, 8, 12], tag  # At loop ends, on the same axis.
  per_class = {tag.rsplit("/", 1)[1] for tag in series if tag.startswith("validation/iou/")}
  assert per_class and per_class <= set(voc.CLASS_NAMES)
  assert series["final/miou"] == [(12, pytest.approx(report["miou"]))]
  assert "config" in series and "`model.alpha` | `0.35`" in series["config"][0][1]
  assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= set(series)


def _summaries(log_dir: pathlib.Path) -> dict[str, list]:
  """{tag: [(step, scalar value or text)]} of the event files directly in log_dir."""
  series = {}
  for path in sorted(log_dir.glob("events.out.tfevents.*")):
    for event in tf.compat.v1.train.summary_iterator(str(path)):
      for value in event.summary.value:
        plugin = value.metadata.plugin_data.plugin_name
        if plugin == "scalars" or value.HasField("simple_value"):
          content = float(tf.make_ndarray(value.tensor)) if value.HasField("tensor") else value.simple_value
        elif plugin == "text":
          content = tf.make_ndarray(value.tensor).item().decode()
        else:
          content = None
        series.setdefault(value.tag, []).append((event.step, content))
  return series


def _valid_pixels(data_dir: str, split: str) -> int:
  """Non-void pixels of a split, read straight from its records: what every metric must count."""
  total = 0
  for serialized in tf.data.TFRecordDataset(tf.io.gfile.glob(f"{data_dir}/{split}-*.tfrecord")):
    mask = tf.io.decode_png(schema.parse_example(serialized)[schema.MASK_ENCODED]).numpy()
    total += int((mask != voc.IGNORE_LABEL).sum())
  return total


def test_mirrored_over_two_cpu_devices(records, tmp_path):
  result = run_trainer(records, tmp_path, "--strategy=mirrored", "--num_cpu_devices=2", "--config.train.epochs=1")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "mirrored with 2 replicas" in result.stderr
  assert json.loads((tmp_path / "metrics.json").read_text())["steps"] == 4


_CONV_SCRIPT = """
import sys
from trainer import distribute
import trainer  # noqa: F401  (imports TensorFlow, as trainer.main does before its flags are read)
if sys.argv[1] == "bf16":
  distribute.use_bf16_cpu_math()
# To stderr: oneDNN's verbose lines go to stdout, and a shared pipe could interleave them with this one.
print("conv-error", distribute.float32_conv_error(), distribute.bf16_cpu_math_in_effect(), file=sys.stderr, flush=True)
"""


def _onednn_float32_conv(mode: str) -> tuple[float, bool, str, str]:
  """(relative error, what bf16_cpu_math_in_effect says, oneDNN's convolution kernel, oneDNN's ISA) in a fresh
  process: oneDNN reads its fpmath mode once, at its first primitive."""
  env = {k: v for k, v in os.environ.items() if k != "ONEDNN_DEFAULT_FPMATH_MODE"}
  env["ONEDNN_VERBOSE"] = "1"  # oneDNN's own account of which kernel ran each primitive.
  result = subprocess.run(
    [sys.executable, "-c", _CONV_SCRIPT, mode],
    cwd=REPO_ROOT,
    env=env,
    capture_output=True,
    text=True,
    check=True,
    timeout=300,
  )
  _, error, in_effect = next(line for line in result.stderr.splitlines() if line.startswith("conv-error")).split()
  lines = result.stdout.splitlines() + result.stderr.splitlines()
  convolutions = [
    line.split(",") for line in lines if line.startswith("onednn_verbose") and ",exec,cpu,convolution," in line
  ]
  kernel = convolutions[0][convolutions[0].index("convolution") + 1] if convolutions else "(no oneDNN convolution)"
  isa = next((line.split("isa:")[1] for line in lines if "isa:" in line), "(not reported)")
  return float(error), in_effect == "True", kernel, isa


@pytest.fixture(scope="module")
def onednn_bf16():
  return _onednn_float32_conv("bf16")


@pytest.mark.parametrize(
  "flag", ["--mixed_precision=mixed_float16", "--mixed_precision=mixed_bfloat16", "--cpu_bf16_math"]
)
def test_mixed_precision_trains_with_finite_loss(records, tmp_path, flag, onednn_bf16):
  result = run_trainer(records, tmp_path, flag, "--config.train.epochs=1")
  assert result.returncode == 0, result.stderr[-3000:]
  if flag == "--cpu_bf16_math":  # The log says what oneDNN really does on this CPU.
    logged = (
      "policy float32, bfloat16 CPU math"
      if onednn_bf16[1]
      else "policy float32, --cpu_bf16_math has no effect on this CPU"
    )
  else:
    logged = f"policy {flag.split('=')[1]}"
  assert logged in result.stderr
  losses = [float(line.split("loss: ")[1].split()[0]) for line in result.stdout.splitlines() if " loss: " in line]
  assert losses and all(np.isfinite(losses))


def test_cpu_bf16_math_takes_effect_where_onednn_has_bf16_kernels(onednn_bf16):
  """--cpu_bf16_math switches oneDNN's float32 convolutions to bfloat16 inputs where oneDNN has kernels for it
  (AMX ones): errors of bfloat16's 8-bit mantissa (~1e-3) instead of float32's (~1e-7), from the first op on,
  though set after TensorFlow's import. Elsewhere the trainer must say it has no effect (test above)."""
  bf16_error, in_effect, kernel, isa = onednn_bf16
  float32_error, _, _, _ = _onednn_float32_conv("float32")
  assert float32_error < 1e-5
  assert in_effect == (bf16_error > 1e-5)
  if "amx" not in kernel:
    assert not in_effect, (kernel, bf16_error)  # No bf16 kernel, no bf16 rounding: the mode changes nothing.
    pytest.skip(
      f"oneDNN runs float32 convolutions here with its {kernel} kernel (ISA: {isa}), which ignores the "
      f"bf16 fpmath mode; only its AMX kernels apply it"
    )
  assert 1e-4 < bf16_error < 2e-2 and in_effect, (kernel, bf16_error)


def test_multi_worker_mirrored_with_two_local_workers(records, tmp_path):
  cluster = {"worker": [f"127.0.0.1:{port}" for port in local_workers.free_ports(2)]}
  workers, logs = [], []
  for index in range(2):
    env = dict(os.environ, TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
    logs.append(tmp_path / f"worker_{index}.log")  # Files, not pipes: a full pipe would stall a worker.
    with open(logs[-1], "w") as log:
      workers.append(
        subprocess.Popen(
          trainer_command(records, tmp_path / "model", "--strategy=multi_worker_mirrored", "--config.train.epochs=1"),
          cwd=REPO_ROOT,
          env=env,
          stdout=log,
          stderr=subprocess.STDOUT,
        )
      )
  for worker in workers:
    worker.wait(timeout=300)
  outputs = [log.read_text() for log in logs]
  for worker, output in zip(workers, outputs, strict=True):
    assert worker.returncode == 0, output[-3000:]
  assert "multi_worker_mirrored with 2 replicas" in outputs[0]
  assert json.loads((tmp_path / "model" / "metrics.json").read_text())["steps"] == 4  # 16 examples, batch 4
  assert sorted(p.name for p in (tmp_path / "model" / "resume").iterdir()) == ["worker_0", "worker_1"]


def test_a_run_killed_mid_training_resumes_and_ends_with_the_planned_steps(records, tmp_path):
  flags = ("--config.train.steps=60", "--config.train.steps_per_loop=5", "--config.train.eval_steps=1")
  process = subprocess.Popen(
    trainer_command(records, tmp_path, *flags), cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
  )
  deadline = time.time() + 240
  index = tmp_path / "resume" / "chief" / "checkpoint"
  reached = False
  while time.time() < deadline and process.poll() is None:
    if index.exists() and "ckpt-3" in index.read_text():
      reached = True
      break
    time.sleep(0.05)
  assert process.poll() is None, "training ended before it could be killed"
  if not reached:
    process.kill()
    pytest.fail("no third loop checkpoint within 240 s")
  process.send_signal(signal.SIGKILL)
  process.wait()
  assert not (tmp_path / "metrics.json").exists()

  result = run_trainer(records, tmp_path, *flags)
  assert result.returncode == 0, result.stderr[-3000:]
  resumed = [line for line in result.stderr.splitlines() if "resuming after loop" in line]
  assert resumed, result.stderr[-2000:]
  loop = int(resumed[0].split("resuming after loop ")[1].split()[0])
  assert 3 <= loop < 12
  assert f"(step {loop * 5})" in resumed[0]  # the optimizer's step count came back with the weights
  assert json.loads((tmp_path / "metrics.json").read_text())["steps"] == 60


@pytest.mark.parametrize(
  "flag, message",
  [
    ("--config.train.no_such_field=1", "no_such_field"),
    ("--strategy=warp_drive", "warp_drive"),
    ("--config.batch_size=3 --strategy=mirrored --num_cpu_devices=2", "does not split evenly"),
    ("--config.optimizer.name=adagrad", "config.optimizer.name='adagrad': expected one of sgd, adam"),
  ],
)
def test_bad_flags_and_config_fields_are_one_line_errors_with_exit_code_2(records, tmp_path, flag, message):
  result = run_trainer(records, tmp_path, *flag.split())
  assert result.returncode == 2
  last = result.stderr.strip().splitlines()[-1]
  assert message in last and "Traceback" not in result.stderr, result.stderr[-2000:]


def test_a_data_dir_without_shards_is_a_one_line_error(tmp_path):
  result = run_trainer(tmp_path, tmp_path / "model")
  assert result.returncode == 2
  assert "no shards for split 'train'" in result.stderr.strip().splitlines()[-1]
  assert "Traceback" not in result.stderr


def test_a_loop_that_ended_in_a_non_finite_loss_is_not_committed_for_resuming(tmp_path):
  """TerminateOnNaN stops fit, which still ends the loop: its weights must not become the resume point."""
  import keras

  from trainer import callbacks

  def resume_callback():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    callback = callbacks.ResumeFromCheckpoint(str(tmp_path / "resume"))
    callback.set_model(model)
    return callback

  first = resume_callback()
  assert first.restore() == 0
  first.on_epoch_end(0, {"loss": 0.5})
  first.on_epoch_end(1, {"loss": float("nan")})
  assert resume_callback().restore() == 1  # The last sound loop.
