"""A training run's folder (local or gs://), as trainer/ writes it and inference/ reads it.

config.json                        the run's config, class names included: what its model is rebuilt from
checkpoints/best.weights.h5        the weights of the best validation mIoU (+ .json: that mIoU and its loop)
checkpoints/final.weights.h5       the weights after the last step
metrics.json                       validation figures of the kept (best, else final) weights
resume/<task>/                     tf.train.Checkpoint of model, optimizer and completed loops, per worker
events.out.tfevents.*              TensorBoard (trainer/summaries.py)
eval_<split>[_pad<N>].json, ..._confusion.png   python -m inference.evaluate's report
import.json                        what python -m inference.import_model imported (imported runs only)
"""

from contracts import errors
from contracts import quiet_imports

quiet_imports.import_quietly()
import tensorflow as tf  # noqa: E402

CONFIG = "config.json"
CHECKPOINTS = "checkpoints"
BEST_WEIGHTS = "checkpoints/best.weights.h5"
FINAL_WEIGHTS = "checkpoints/final.weights.h5"
METRICS = "metrics.json"
RESUME = "resume"
IMPORT_REPORT = "import.json"


def path(model_dir: str, name: str) -> str:
  return tf.io.gfile.join(model_dir, name)


def trained_weights(model_dir: str) -> str | None:
  """A run's best-validation weights, else its final ones; None before any training finished."""
  return next(
    (
      candidate
      for candidate in (path(model_dir, BEST_WEIGHTS), path(model_dir, FINAL_WEIGHTS))
      if tf.io.gfile.exists(candidate)
    ),
    None,
  )


def evaluation_stem(model_dir: str, split: str, pad_to: int = 0) -> str:
  """eval_<split>[_pad<N>]: the .json report and _confusion.png of an evaluation, without their endings."""
  return path(model_dir, f"eval_{split}" + (f"_pad{pad_to}" if pad_to else ""))


def run_folder_of(weights: str) -> str:
  """The run folder of a weights file inside its checkpoints/ (else the file's own folder)."""
  folder = weights.rstrip("/").rsplit("/", 1)[0] if "/" in weights else "."
  if folder.rsplit("/", 1)[-1] == CHECKPOINTS:
    folder = folder.rsplit("/", 1)[0] if "/" in folder else "."
  return folder


class RunFolderError(errors.UserError, ValueError):
  """A folder that is not (or not yet) a training run: no config.json, no weights."""
