"""What a run shows in TensorBoard: one event stream in the run's folder, every value against the optimizer step.

train/       every config.train.log_every_steps steps: loss (the mean over those steps), learning_rate,
             images_per_second (compilation excluded), loss_scale (mixed float16); at each loop's end the
             loop's miou and pixel_accuracy
validation/  after each validation: loss, miou, pixel_accuracy, iou/<class>, confusion_matrix (a picture with
             its colour scale), confusion_table (the same as a table), triptych/<i> with a legend
final/       miou and pixel_accuracy of the weights the run kept (its best), scored at the end
config       the run's config as a table (Text) and as hyperparameters (HParams, with the final mIoU), so that
             the runs under one --logdir compare.
"""

import json
import time

import keras
import ml_collections
import numpy as np
from tensorboard.plugins.hparams import api as hparams
import tensorflow as tf

from deeplab import metrics as metrics_lib
from deeplab import visualize

FINAL_MIOU = "final/miou"
VALIDATION_MIOU = "validation/miou"


def flat_hyperparameters(config: ml_collections.ConfigDict) -> dict:
  """{"model.alpha": 0.35, ...}: the config's leaves as HParams takes them (bool, int, float or str)."""
  flat = {}

  def visit(node, prefix):
    for key, value in node.items():
      if isinstance(value, (dict, ml_collections.ConfigDict)):
        visit(value, f"{prefix}{key}.")
      elif isinstance(value, (bool, int, float, str)):
        flat[prefix + key] = value
      else:
        flat[prefix + key] = json.dumps(value if not isinstance(value, tuple) else list(value))

  visit(config.to_dict() if isinstance(config, ml_collections.ConfigDict) else config, "")
  return flat


def config_table(config: ml_collections.ConfigDict) -> str:
  """The config as a Markdown table (TensorBoard's Text dashboard renders it)."""
  rows = [
    f"| `{name}` | `{value if value != '' else chr(34) * 2}` |" for name, value in flat_hyperparameters(config).items()
  ]
  return "\n".join(["| field | value |", "|---|---|", *rows])


class TensorBoardLog(keras.callbacks.Callback):
  """Writes the summaries listed in this module's docstring, and puts each loop's images/s into its logs (the
  console line). Every worker reads the validation confusion matrix (a collective); only the chief writes."""

  def __init__(
    self,
    log_dir: str,
    *,
    config: ml_collections.ConfigDict,
    class_names,
    miou: metrics_lib.MeanIoU,
    samples,
    write: bool,
    class_colours=(),
  ):
    super().__init__()
    self.config = config
    self.class_names = tuple(class_names)
    self.class_colours = tuple(class_colours)
    self.global_batch_size = config.batch_size
    self.log_every_steps = config.train.log_every_steps
    self.miou = miou
    self.samples = samples  # [(image uint8 HxWx3, label uint8 HxW)] at native size.
    self.writer = tf.summary.create_file_writer(log_dir) if write else None
    self.run_name = log_dir.rstrip("/").rsplit("/", 1)[-1]  # What HParams lists the run as.
    self.last_report: dict | None = None  # metrics.summarize_confusion's, of the last validation.
    self._loop_start_step = 0
    # (step, steps done in the loop, their summed loss or None without a loss) at the last log point.
    self._logged: tuple[int, int, float | None] = (0, 0, 0.0)
    # (step, time): last timed, the loop's first and latest; all None until the loop's first batch ends.
    self._clock: tuple[int, float] | None = None
    self._first: tuple[int, float] | None = None
    self._latest: tuple[int, float] | None = None

  def on_train_begin(self, logs=None):
    if self.writer is None:
      return
    step = self._step()
    with self.writer.as_default(step=step):
      if step == 0:  # A resumed run has written these already.
        tf.summary.text("config", config_table(self.config))
        hparams.hparams_config(
          hparams=[hparams.HParam(name) for name in flat_hyperparameters(self.config)],
          metrics=[
            hparams.Metric(FINAL_MIOU, display_name="final mIoU"),
            hparams.Metric(VALIDATION_MIOU, display_name="last validation mIoU"),
          ],
        )
        hparams.hparams(flat_hyperparameters(self.config), trial_id=self.run_name)

  def _step(self) -> int:
    return int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))

  def on_epoch_begin(self, epoch, logs=None):
    self._loop_start_step = self._step()
    self._logged = (self._loop_start_step, 0, 0.0)
    self._clock = self._first = self._latest = None

  def on_train_batch_end(self, batch, logs=None):
    now = time.perf_counter()
    done = batch + 1  # Steps of this loop so far (Keras passes the last step of an execution).
    step = self._loop_start_step + done
    self._latest = (step, now)
    if self._first is None:  # The loop's first execution (and the run's compilation) is not timed.
      self._first = self._clock = (step, now)
    last_step, last_done, last_sum = self._logged
    if step // self.log_every_steps == last_step // self.log_every_steps:
      return
    loss_sum = float(keras.ops.convert_to_numpy(logs["loss"])) * done if logs and "loss" in logs else None
    self._logged = (step, done, loss_sum)
    if self.writer is None:
      return
    optimizer = self.model.optimizer
    with self.writer.as_default(step=step):
      if loss_sum is not None and last_sum is not None:  # Keras's running mean over the loop, differenced.
        tf.summary.scalar("train/loss", (loss_sum - last_sum) / (done - last_done))
      tf.summary.scalar("train/learning_rate", float(keras.ops.convert_to_numpy(optimizer.learning_rate)))
      assert self._clock is not None  # Set with self._first, at the loop's first batch.
      if step > self._clock[0]:
        tf.summary.scalar("train/images_per_second", self._images_per_second(self._clock, (step, now)))
        self._clock = (step, now)
      if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        tf.summary.scalar("train/loss_scale", float(keras.ops.convert_to_numpy(optimizer.dynamic_scale)))

  def _images_per_second(self, start: tuple[int, float], end: tuple[int, float]) -> float:
    return (end[0] - start[0]) * self.global_batch_size / max(end[1] - start[1], 1e-9)

  def on_epoch_end(self, epoch, logs=None):
    if logs is None:
      return
    step = self._step()
    if (
      self._first is not None and self._latest is not None and self._latest[0] > self._first[0]
    ):  # From the first execution to the last, validation out.
      logs["images_per_second"] = self._images_per_second(self._first, self._latest)
    validated = "val_miou" in logs
    if validated:  # Every worker reads it (reading the replica-summed variable is a collective).
      confusion = self.miou.confusion_matrix()
      self.last_report = metrics_lib.summarize_confusion(confusion, self.class_names)
    if self.writer is None:
      return
    with self.writer.as_default(step=step):
      for name in ("miou", "pixel_accuracy"):
        if name in logs:
          tf.summary.scalar(f"train/{name}", logs[name])
      if validated:
        self._write_validation(logs, confusion)
    self.writer.flush()

  def _write_validation(self, logs, confusion: np.ndarray) -> None:
    report = self.last_report
    assert report is not None  # on_epoch_end sets it before it calls this.
    for name in ("loss", "miou", "pixel_accuracy"):
      tf.summary.scalar(f"validation/{name}", logs[f"val_{name}"])
    tf.summary.scalar("validation/mean_class_accuracy", report["mean_class_accuracy"])
    for name, value in report["per_class_iou"].items():
      if value is not None:
        tf.summary.scalar(f"validation/iou/{name}", value)
    for name, value in report["per_class_accuracy"].items():
      if value is not None:
        tf.summary.scalar(f"validation/accuracy/{name}", value)
    picture = visualize.confusion_matrix_picture(confusion, self.class_names)
    tf.summary.image("validation/confusion_matrix", picture[None])
    tf.summary.text("validation/confusion_table", visualize.confusion_matrix_table(confusion, self.class_names))
    for index, (image, label) in enumerate(self.samples):
      logits = self.model(tf.constant(image[None], tf.float32), training=False)
      prediction = np.argmax(keras.ops.convert_to_numpy(logits)[0], axis=-1).astype(np.uint8)
      tf.summary.image(
        f"validation/triptych/{index}",
        visualize.triptych(image, label, prediction, class_names=self.class_names, class_colours=self.class_colours)[
          None
        ],
      )

  def write_final(self, report: dict) -> None:
    """The figures of the weights the run kept (scored after training), at the last step."""
    if self.writer is None:
      return
    with self.writer.as_default(step=report.get("steps", self._step())):
      tf.summary.scalar(FINAL_MIOU, report["miou"])
      tf.summary.scalar("final/pixel_accuracy", report["pixel_accuracy"])
    self.writer.flush()
