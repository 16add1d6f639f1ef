"""tf.distribute strategies by name, and the small facts the trainer needs about them."""

import os

import tensorflow as tf

from contracts import errors

STRATEGIES = ("default", "one_device", "mirrored", "multi_worker_mirrored", "tpu")


class StrategyError(errors.UserError, RuntimeError):
  """A strategy that cannot be set up here, with a message a user can act on."""


def split_cpu(num_devices: int) -> None:
  """Presents the host CPU as `num_devices` logical devices (to run `mirrored` on a machine without GPUs).

  Must run before TensorFlow initialises its devices, i.e. before any op runs.
  """
  cpu = tf.config.list_physical_devices("CPU")[0]
  tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * num_devices)


def use_bf16_cpu_math() -> None:
  """Allows oneDNN to compute float32 convolutions and matmuls from bfloat16-rounded inputs with float32 sums
  (its "fpmath mode"; on CPUs what TF32 is on GPUs). oneDNN reads it when it creates its first primitive: call
  this before any op runs. The mode only *allows* the rounding: oneDNN applies it where it has a kernel that does
  it (in TensorFlow 2.21's oneDNN 3.7: its AMX kernels); elsewhere, AVX512-BF16 CPUs without AMX included, it
  keeps float32. `bf16_cpu_math_in_effect()` tells which happened.
  """
  os.environ["ONEDNN_DEFAULT_FPMATH_MODE"] = "BF16"


def float32_conv_error() -> float:
  """Relative error of a float32 1x1 convolution against float64: ~1e-7 in float32, ~1e-3 from bfloat16 inputs."""
  x = tf.random.stateless_normal([2, 32, 32, 64], seed=[1, 2])
  w = tf.random.stateless_normal([1, 1, 64, 32], seed=[3, 4])
  exact = tf.einsum("bhwc,cd->bhwd", tf.cast(x, tf.float64), tf.cast(w[0, 0], tf.float64))
  error = tf.reduce_max(tf.abs(tf.cast(tf.nn.conv2d(x, w, 1, "SAME"), tf.float64) - exact))
  return float(error / tf.reduce_max(tf.abs(exact)))


def bf16_cpu_math_in_effect() -> bool:
  """Whether this CPU's oneDNN really rounds float32 convolution inputs to bfloat16 (after use_bf16_cpu_math).

  Decided by what the kernels compute, not by CPU flags: AVX512-BF16 alone does not imply it (seen on AMD EPYC).
  """
  return float32_conv_error() > 1e-5


def create_strategy(name: str, *, tpu: str = "") -> tf.distribute.Strategy:
  if name == "default":
    return tf.distribute.get_strategy()
  if name == "one_device":
    gpus = tf.config.list_logical_devices("GPU")
    return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
  if name == "mirrored":
    # All GPUs; without GPUs, all logical CPUs (one unless split_cpu was called).
    devices = [d.name for d in tf.config.list_logical_devices("GPU")] or [
      d.name for d in tf.config.list_logical_devices("CPU")
    ]
    return tf.distribute.MirroredStrategy(devices)
  if name == "multi_worker_mirrored":
    if "TF_CONFIG" not in os.environ:
      raise StrategyError("multi_worker_mirrored needs the cluster in TF_CONFIG (see launch/ for how to start workers)")
    # When a worker dies, the others do not hang: TF 2.21's MWMS starts the coordination service, whose missed
    # heartbeats abort their collectives with UnavailableError within seconds (measured: 4-12 s after a
    # SIGKILL of either worker), and they exit; the job is then restarted whole and resumes from the last loop
    # checkpoint (launch/local_workers.py, Vertex AI, a TFJob). CommunicationOptions(timeout_seconds=...) is
    # not used: it is a debugging aid (one thread per collective) and would also abort legitimately slow steps.
    return tf.distribute.MultiWorkerMirroredStrategy()
  if name == "tpu":
    try:
      resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or None)
      tf.config.experimental_connect_to_cluster(resolver)
      tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError) as error:
      raise StrategyError(f"no TPU found for --tpu={tpu or '(default)'}: {str(error).splitlines()[0]}") from None
    return tf.distribute.TPUStrategy(resolver)
  raise StrategyError(f"unknown strategy {name!r}: use one of {', '.join(STRATEGIES)}")


def is_tpu(strategy: tf.distribute.Strategy) -> bool:
  return isinstance(strategy, (tf.distribute.TPUStrategy, tf.distribute.experimental.TPUStrategy))


def is_chief(strategy: tf.distribute.Strategy) -> bool:
  """Whether this process writes checkpoints and summaries (worker 0, or the only process)."""
  resolver = getattr(strategy, "cluster_resolver", None)
  if resolver is None or not resolver.task_type:
    return True
  return resolver.task_type == "chief" or (
    resolver.task_type == "worker" and resolver.task_id == 0 and "chief" not in resolver.cluster_spec().as_dict()
  )


def task_name(strategy: tf.distribute.Strategy) -> str:
  """A name unique to this process in the cluster ("worker_1"), for files each worker writes itself."""
  resolver = getattr(strategy, "cluster_resolver", None)
  if resolver is None or not resolver.task_type:
    return "chief"
  return f"{resolver.task_type}_{resolver.task_id}"


def chief_task_name(strategy: tf.distribute.Strategy) -> str:
  """task_name() of the process that is_chief(): the one resume checkpoint every worker can restore from, so
  that all resume at the same loop even when a failure struck between two workers' checkpoint saves."""
  resolver = getattr(strategy, "cluster_resolver", None)
  if resolver is None or not resolver.task_type:
    return "chief"
  return "chief_0" if "chief" in resolver.cluster_spec().as_dict() else "worker_0"
