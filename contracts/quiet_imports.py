"""Imports TensorFlow (and, for the conversion, Beam) without the wall of start-up log lines.

TF 2.21 prints ~9 lines (oneDNN notice, CUDA stub, cpu_feature_guard, absl pre-init) from C++ before absl
logging is initialised, so TF_CPP_MIN_LOG_LEVEL alone cannot hide them. File descriptor 2 points at a temporary
file only while importing, and the file is replayed if the import fails, so that real errors stay visible.
oneDNN stays on (turning it off halves CPU speed); XLA stays off on CPU (Keras's jit_compile="auto").
"""

import contextlib
import importlib
import logging
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@contextlib.contextmanager
def _stderr_captured():
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile(mode="w+b") as sink:
    os.dup2(sink.fileno(), 2)
    try:
      yield
    except BaseException:
      os.dup2(saved, 2)
      sink.seek(0)
      sys.stderr.write(sink.read().decode(errors="replace"))
      raise
    finally:
      os.dup2(saved, 2)
      os.close(saved)


def import_quietly(*modules: str) -> None:
  """Imports tensorflow and then `modules` (e.g. "apache_beam") once each, silencing their import-time noise."""
  wanted = ("tensorflow", *modules)
  if all(name in sys.modules for name in wanted):
    return
  # Beam warns through the root logger about optional GCP clients it does not need here.
  root = logging.getLogger()
  level = root.level
  root.setLevel(logging.ERROR)
  try:
    with _stderr_captured():
      tf = importlib.import_module("tensorflow")
      for name in modules:
        importlib.import_module(name)
      # Probing devices here prints the 'failed call to cuInit' of GPU-less machines into the sink;
      # it leaves logical device configuration (e.g. 2 virtual CPUs) still possible.
      tf.config.list_physical_devices()
  finally:
    root.setLevel(level)
