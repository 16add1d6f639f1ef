"""A TFLite interpreter: LiteRT's (package ai-edge-litert) when installed, else tf.lite's."""

import warnings

import tensorflow as tf


def make_interpreter(model: str | bytes, num_threads: int | None = None):
  """A ready TFLite interpreter for a .tflite path (local or gs://) or its bytes: LiteRT's (package
  ai-edge-litert) when installed, else tf.lite's, deprecated in its favour but still working in TF 2.21."""
  content = model if isinstance(model, bytes) else tf.io.gfile.GFile(model, "rb").read()
  try:
    from ai_edge_litert.interpreter import Interpreter
  except ImportError:
    Interpreter = tf.lite.Interpreter  # noqa: N806
  with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated", category=UserWarning)
    interpreter = Interpreter(model_content=content, num_threads=num_threads)
  interpreter.allocate_tensors()
  return interpreter
