"""Timing shared by our benchmark and the peer scripts (which run in another venv): TensorFlow only.

Every model is timed the same way: a tf.function train step (forward, float32 sparse softmax cross-entropy on
logits at the input resolution, gradients, SGD with momentum) or a tf.function forward pass + argmax, on
synthetic data. `StepTimer.step_times` runs a few steps of one setting at a time, so that a caller can
interleave models (ours in-process, peers in their own venv through `serve`) and share out the drift of a
busy machine evenly.
"""

from collections.abc import Callable
import json
import sys
import time

import numpy as np
import tensorflow as tf

NUM_CLASSES = 21
# name: (mode, batch, size). Figures are images/s.
SETTINGS = {"train_512_b4": ("train", 4, 512), "train_256_b8": ("train", 8, 256), "infer_512_b4": ("infer", 4, 512)}
PROTOCOL_PREFIX = "BENCH "  # Marks serve()'s output lines among whatever else a library prints.


def synthetic_batch(batch: int, size: int, seed: int = 0) -> tuple[tf.Tensor, tf.Tensor]:
  rng = np.random.default_rng(seed)
  images = rng.uniform(0, 255, (batch, size, size, 3)).astype(np.float32)
  labels = rng.integers(0, NUM_CLASSES, (batch, size, size)).astype(np.int32)
  return tf.constant(images), tf.constant(labels)


class StepTimer:
  """forward(images, training) -> logits [B, H, W, NUM_CLASSES]; variables() -> the variables to train."""

  def __init__(self, forward: Callable[..., tf.Tensor], variables: Callable[[], list], optimizer):
    @tf.function
    def train_step(images, labels):
      with tf.GradientTape() as tape:
        logits = tf.cast(forward(images, training=True), tf.float32)
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))
      trainable = variables()
      gradients = tape.gradient(loss, trainable)
      # Official's backbone holds a layer its model does not use (MobileNetV2's Conv_1): no gradient.
      optimizer.apply_gradients([(g, v) for g, v in zip(gradients, trainable, strict=True) if g is not None])
      return loss

    @tf.function
    def predict(images, labels):
      del labels
      return tf.argmax(forward(images, training=False), axis=-1)

    self._steps = {"train": train_step, "infer": predict}
    self._data: dict[tuple[int, int], tuple[tf.Tensor, tf.Tensor]] = {}

  def step_times(self, setting: str, count: int) -> dict[str, list[float]]:
    """Wall and process-CPU seconds of `count` consecutive steps of `setting` (the first call also traces).

    CPU seconds measure the work done, and hold steady when other processes take cores away (wall time does
    not); wall time also shows how well the work spreads over the cores.
    """
    mode, batch, size = SETTINGS[setting]
    if (batch, size) not in self._data:
      self._data[batch, size] = synthetic_batch(batch, size)
    images, labels = self._data[batch, size]
    times: dict[str, list[float]] = {"wall": [], "cpu": []}
    for _ in range(count):
      wall, cpu = time.perf_counter(), time.process_time()
      self._steps[mode](images, labels).numpy()  # .numpy() waits for the step to finish.
      times["wall"].append(time.perf_counter() - wall)
      times["cpu"].append(time.process_time() - cpu)
    return times


def serve(timer: StepTimer, info: dict) -> None:
  """Answers {"setting": ..., "count": ...} lines on stdin with step_times() lines; `info` first."""

  def reply(message: dict) -> None:
    print(PROTOCOL_PREFIX + json.dumps(message), flush=True)

  reply(info)
  for line in sys.stdin:
    request = json.loads(line)
    reply(timer.step_times(request["setting"], request["count"]))


def count_flops(forward: Callable[..., tf.Tensor], height: int, width: int) -> int:
  """Forward FLOPs of one image by TF's profiler (same counting as deeplab.flops.count_flops)."""
  from tensorflow.python.framework import convert_to_constants  # No public API freezes a concrete function.

  concrete = tf.function(lambda images: forward(images, training=False)).get_concrete_function(
    tf.TensorSpec([1, height, width, 3], tf.float32)
  )
  graph = convert_to_constants.convert_variables_to_constants_v2(concrete).graph
  builder = tf.compat.v1.profiler.ProfileOptionBuilder
  options = builder(builder.float_operation()).with_empty_output().build()
  return tf.compat.v1.profiler.profile(graph=graph, cmd="op", options=options).total_float_ops
