"""Keras callbacks that make training resumable: the resume checkpoint and the best weights."""

import json

import keras
import numpy as np
import tensorflow as tf


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
    self._manager: tf.train.CheckpointManager | None = None  # Both set by restore().
    self._loop: tf.Variable | None = None

  def restore(self, from_directory: str | None = None) -> int:
    """Restores the latest checkpoint (of `from_directory` when given, else of its own directory) if any; returns
    the number of loops already done. Call before fit."""
    with self.model.distribute_strategy.scope():
      self._loop = loop = tf.Variable(0, dtype=tf.int64, trainable=False, name="completed_loops")
      if not self.model.optimizer.built:  # Its slots must exist to be restored into.
        self.model.optimizer.build(self.model.trainable_variables)
    checkpoint = tf.train.Checkpoint(model=self.model, optimizer=self.model.optimizer, completed_loops=loop)
    self._manager = manager = tf.train.CheckpointManager(checkpoint, self.directory, max_to_keep=self.max_to_keep)
    latest = tf.train.latest_checkpoint(from_directory) if from_directory else manager.latest_checkpoint
    if latest:
      checkpoint.restore(latest).assert_existing_objects_matched()
    return int(loop.numpy())

  def on_epoch_end(self, epoch, logs=None):
    loss = (logs or {}).get("loss")
    if loss is not None and not np.isfinite(loss):
      return  # TerminateOnNaN stopped the run: a rerun resumes from the last loop whose weights were sound.
    if self._loop is None or self._manager is None:
      raise RuntimeError("ResumeFromCheckpoint.restore() must be called before fit")
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
    super().__init__(
      filepath, monitor=monitor, mode="max", save_best_only=True, save_weights_only=True, initial_value_threshold=best
    )

  def on_epoch_end(self, epoch, logs=None):
    before = self.best
    super().on_epoch_end(epoch, logs)
    if self.best != before:
      with tf.io.gfile.GFile(self._record, "w") as f:
        json.dump({self.monitor: float(self.best), "loop": epoch + 1}, f)
