"""Forward FLOPs of a model, as TF's profiler counts them (benchmarks, the published models' comparison)."""

import keras
import tensorflow as tf


def count_flops(model: keras.Model, height: int, width: int) -> int:
  """Forward FLOPs (multiply and add counted separately) of one height x width image, by TF's profiler."""
  # No public API freezes a concrete function; the profiler warns that it uses a deprecated TF1 helper.
  from tensorflow.python.framework import convert_to_constants
  from tensorflow.python.util import deprecation

  forward = tf.function(lambda images: model(images, training=False))
  concrete = forward.get_concrete_function(tf.TensorSpec([1, height, width, 3], tf.float32))
  graph = convert_to_constants.convert_variables_to_constants_v2(concrete).graph
  builder = tf.compat.v1.profiler.ProfileOptionBuilder
  options = builder(builder.float_operation()).with_empty_output().build()
  with deprecation.silence():
    return tf.compat.v1.profiler.profile(graph=graph, cmd="op", options=options).total_float_ops
