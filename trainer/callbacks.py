"""Keras callbacks that make training resumable and visible: checkpoints, resume, TensorBoard extras."""

import json
import os
import time

import keras
import numpy as np
import tensorflow as tf

from preprocessing import voc
from trainer import metrics as metrics_lib
from trainer import visualize


class ResumeFromCheckpoint(keras.callbacks.Callback):
  """Checkpoints model + optimizer at every loop end and, on start, continues from the last one.

  Keras's BackupAndRestore writes an .h5 file and a JSON file one after the other, so a kill between the two
  replays a loop with weights that already saw it. A tf.train.Checkpoint commits atomically (the index file is
  renamed into place last), and the loop counter lives inside it, so a run killed at any moment restarts at
  the last committed loop and ends with the planned number of optimizer steps.
  """

  def __init__(self, directory: str, max_to_keep: int = 2):
    super().__init__()
    self.directory = directory
    self.max_to_keep = max_to_keep
    self._manager = None
    self._loop = None

  def restore(self, from_directory: str | None = None) -> int:
    """Restores the latest checkpoint (of `from_directory` when given, else of its own directory) if any; returns
    the number of loops already done. Call before fit."""
    with self.model.distribute_strategy.scope():
      self._loop = tf.Variable(0, dtype=tf.int64, trainable=False, name="completed_loops")
      if not self.model.optimizer.built:  # Its slots must exist to be restored into.
        self.model.optimizer.build(self.model.trainable_variables)
    checkpoint = tf.train.Checkpoint(model=self.model, optimizer=self.model.optimizer, completed_loops=self._loop)
    self._manager = tf.train.CheckpointManager(checkpoint, self.directory, max_to_keep=self.max_to_keep)
    latest = tf.train.latest_checkpoint(from_directory) if from_directory else self._manager.latest_checkpoint
    if latest:
      checkpoint.restore(latest).assert_existing_objects_matched()
    return int(self._loop.numpy())

  def on_epoch_end(self, epoch, logs=None):
    loss = (logs or {}).get("loss")
    if loss is not None and not np.isfinite(loss):
      return  # TerminateOnNaN stopped the run: a rerun resumes from the last loop whose weights were sound.
    self._loop.assign(epoch + 1)
    self._manager.save(checkpoint_number=epoch + 1)


class BestCheckpoint(keras.callbacks.ModelCheckpoint):
  """Best-validation-mIoU weights; remembers the best score across restarts so a resumed run never
  overwrites a better checkpoint with a worse one."""

  def __init__(self, filepath: str, monitor: str = "val_miou"):
    self._record = filepath + ".json"
    best = None
    if tf.io.gfile.exists(self._record):
      with tf.io.gfile.GFile(self._record) as f:
        best = json.load(f).get(monitor)
    super().__init__(filepath, monitor=monitor, mode="max", save_best_only=True, save_weights_only=True,
                     initial_value_threshold=best)

  def on_epoch_end(self, epoch, logs=None):
    before = self.best
    super().on_epoch_end(epoch, logs)
    if self.best != before:
      with tf.io.gfile.GFile(self._record, "w") as f:
        json.dump({self.monitor: float(self.best), "loop": epoch + 1}, f)


class TrainingStats(keras.callbacks.Callback):
  """Adds images/s of the training steps (validation excluded) and the loss scale to each loop's logs.

  Must come before the TensorBoard callback in the list, which then writes them with the rest.
  """

  def __init__(self, global_batch_size: int, steps_per_loop: int):
    super().__init__()
    self.images_per_loop = global_batch_size * steps_per_loop
    self._start = self._end = None

  def on_epoch_begin(self, epoch, logs=None):
    self._start, self._end = time.perf_counter(), None

  def on_test_begin(self, logs=None):
    self._end = self._end or time.perf_counter()

  def on_epoch_end(self, epoch, logs=None):
    if logs is None or self._start is None:
      return
    elapsed = (self._end or time.perf_counter()) - self._start
    logs["images_per_second"] = self.images_per_loop / max(elapsed, 1e-9)
    optimizer = self.model.optimizer
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
      logs["loss_scale"] = float(keras.ops.convert_to_numpy(optimizer.dynamic_scale))


class ValidationPictures(keras.callbacks.Callback):
  """After each validation: per-class IoU, pixel accuracy, a confusion-matrix picture and a few triptychs
  (image / ground truth / prediction in the VOC colours), written to TensorBoard's validation run.

  Every worker reads the (replica-summed) confusion matrix, as reading it is a collective; only the chief
  writes.
  """

  def __init__(self, log_dir: str, miou: metrics_lib.MeanIoU, samples, *, write: bool,
               class_names=voc.CLASS_NAMES):
    super().__init__()
    self.miou = miou
    self.samples = samples  # [(image uint8 HxWx3, label uint8 HxW)] at native size.
    self.class_names = class_names
    self.writer = tf.summary.create_file_writer(os.path.join(log_dir, "validation")) if write else None
    self.last_report = None

  def on_epoch_end(self, epoch, logs=None):
    if not logs or "val_miou" not in logs:
      return
    confusion = self.miou.confusion_matrix()
    report = metrics_lib.summarize_confusion(confusion, self.class_names)
    self.last_report = report
    if self.writer is None:
      return
    step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
    with self.writer.as_default(step=step):
      for name, value in report["per_class_iou"].items():
        if value is not None:
          tf.summary.scalar(f"per_class_iou/{name}", value)
      picture = visualize.confusion_matrix_picture(confusion, self.class_names)
      tf.summary.image("confusion_matrix", picture[None])
      for index, (image, label) in enumerate(self.samples):
        logits = self.model(tf.constant(image[None], tf.float32), training=False)
        prediction = np.argmax(keras.ops.convert_to_numpy(logits)[0], axis=-1).astype(np.uint8)
        tf.summary.image(f"triptych/{index}", visualize.triptych(image, label, prediction)[None])
    self.writer.flush()
