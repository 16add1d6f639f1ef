"""The trainer's training step with and without XLA on this CPU, and the memory a training image takes at 513.

  .venv/bin/python -m benchmarks.xla_step                      # from the repo root
  .venv/bin/python -m benchmarks.xla_step --crop=256 --batch=4 --steps=5 --memory_crop=513

Step time: configs/deeplab_voc.py's model (random init, synthetic batches with their augmentation geometry),
compiled by train.compile_model as the trainer does, once with jit_compile=False and once with True; the
median wall and process-CPU seconds of --steps steps after two warm-up steps (the first compiles).
Memory per image: peak resident memory (ru_maxrss) of a process that runs two training steps at --memory_crop,
at two batch sizes; the difference over the batch difference is what one more image costs, float32 and
mixed_float16 (the CPU runs float16 kernels of its own, so an accelerator's figure may differ).
Each measurement runs in its own process.
"""

import json
import statistics
import subprocess
import sys
import time

from absl import app
from absl import flags

_CROP = flags.DEFINE_integer("crop", 256, "Training crop of the step-time measurement.")
_BATCH = flags.DEFINE_integer("batch", 4, "Batch of the step-time measurement.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps (after 2 warm-up steps).")
_MEMORY_CROP = flags.DEFINE_integer("memory_crop", 513, "Training crop of the memory measurement; 0 skips it.")
_MEMORY_BATCHES = flags.DEFINE_list("memory_batches", ["1", "3"], "The two batch sizes of the memory measurement.")
_CHILD = flags.DEFINE_string("child", None, "Internal: run one measurement (JSON) and print its result.")


def _measure(spec: dict) -> dict:
  import resource

  import keras
  import numpy as np
  import tensorflow as tf

  from configs import deeplab_voc
  from deeplab import building
  from deeplab import tfrecords
  from trainer import augment
  from trainer import train

  keras.mixed_precision.set_global_policy(spec["policy"])
  config = deeplab_voc.get_config()
  config.model.backbone_weights = ""
  config.input.crop_size = spec["crop"]
  keras.utils.set_random_seed(0)
  model = building.create_model(config)
  train.compile_model(
    model,
    config,
    total_steps=100,
    execution=train.Execution(spec["jit_compile"], steps_per_execution=1, fixed_batch_shapes=False),
  )
  batch, canvas = spec["batch"], spec["crop"]
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (batch, canvas, canvas, 3)).astype(np.uint8)
  labels = rng.integers(0, config.model.num_classes, (batch, canvas, canvas)).astype(np.uint8)
  sizes = tf.constant([[canvas, canvas]] * batch)
  geometry = augment.draw_geometry(
    sizes, sizes, tf.constant([0, 1], tf.int64), crop=(canvas, canvas), min_scale=0.5, max_scale=2.0, flip=True
  )
  data = tf.data.Dataset.from_tensors(tfrecords.Batch(augment.Canvases(images, geometry), labels)).repeat()
  iterator = iter(data)
  model.make_train_function()
  step = model.train_function
  walls, cpus = [], []
  for index in range(2 + spec["steps"]):
    wall, cpu = time.perf_counter(), time.process_time()
    logs = step(iterator)
    float(logs["loss"])
    if index >= 2:
      walls.append(time.perf_counter() - wall)
      cpus.append(time.process_time() - cpu)
  return {
    "wall_s": statistics.median(walls) if walls else None,
    "cpu_s": statistics.median(cpus) if cpus else None,
    "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
  }


def _run(spec: dict) -> dict:
  result = subprocess.run(
    [sys.executable, "-m", "benchmarks.xla_step", f"--child={json.dumps(spec)}"],
    capture_output=True,
    text=True,
    check=False,
  )
  if result.returncode:
    raise RuntimeError(f"{spec}: {result.stderr.strip().splitlines()[-1]}")
  return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv):
  del argv
  if _CHILD.value:
    print(json.dumps(_measure(json.loads(_CHILD.value))))
    return
  print(f"training step, deeplab_voc model, crop {_CROP.value}, batch {_BATCH.value}, median of {_STEPS.value}:")
  for jit_compile in (False, True):
    r = _run(
      {
        "policy": "float32",
        "crop": _CROP.value,
        "batch": _BATCH.value,
        "steps": _STEPS.value,
        "jit_compile": jit_compile,
      }
    )
    print(f"  jit_compile={jit_compile!s:<5}  {r['wall_s']:.2f} s wall, {r['cpu_s']:.2f} s CPU per step")
  if not _MEMORY_CROP.value:
    return
  low, high = (int(b) for b in _MEMORY_BATCHES.value)
  print(f"peak resident memory of a training step at {_MEMORY_CROP.value} (batches {low} and {high}):")
  for policy in ("float32", "mixed_float16"):
    rss = {
      b: _run({"policy": policy, "crop": _MEMORY_CROP.value, "batch": b, "steps": 0, "jit_compile": False})[
        "max_rss_mb"
      ]
      for b in (low, high)
    }
    print(
      f"  {policy:<14} {rss[low]:.0f} / {rss[high]:.0f} MB: {(rss[high] - rss[low]) / (high - low):.0f} MB per image"
    )


if __name__ == "__main__":
  app.run(main)
