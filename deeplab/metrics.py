"""Validation metrics over the confusion matrix of valid pixels (label 255 ignored)."""

import keras
import numpy as np
import tensorflow as tf

from contracts import voc


class MeanIoU(keras.metrics.MeanIoU):
  """Keras's MeanIoU on logits, ignoring the void label, that also reports per-class IoU and accuracy."""

  def __init__(self, num_classes: int = voc.NUM_CLASSES, name: str = "miou", xla_compatible: bool = False, **kwargs):
    kwargs.setdefault("ignore_class", voc.IGNORE_LABEL)
    kwargs.setdefault("sparse_y_pred", False)
    super().__init__(num_classes=num_classes, name=name, **kwargs)
    # XLA has no Bincount kernel; a segment sum is its fixed-length form (slower than Bincount without XLA).
    self.xla_compatible = xla_compatible

  def update_state(self, y_true, y_pred, sample_weight=None):
    """One bincount over the valid pixels' (label, arg-max) pairs: cheaper than Keras's update (casts, masks, its
    own confusion_matrix) in a training step (benchmarks/model_throughput.py)."""
    if sample_weight is not None or self.ignore_class is None:
      return super().update_state(y_true, y_pred, sample_weight)
    n = self.num_classes
    labels = tf.reshape(tf.cast(y_true, tf.int32), [-1])
    predicted = tf.reshape(tf.argmax(y_pred, axis=-1, output_type=tf.int32), [-1])
    valid = (labels >= 0) & (labels < n) & (labels != self.ignore_class)
    index = tf.where(valid, labels * n + predicted, n * n)  # Invalid pixels go to an extra bin, dropped below.
    if self.xla_compatible:
      counts = tf.math.unsorted_segment_sum(tf.ones_like(index, self.total_cm.dtype), index, n * n + 1)
    else:
      counts = tf.math.bincount(index, minlength=n * n + 1, maxlength=n * n + 1, dtype=self.total_cm.dtype)
    self.total_cm.assign_add(tf.reshape(counts[:-1], [n, n]))

  def confusion_matrix(self) -> np.ndarray:
    """[true class, predicted class] pixel counts accumulated so far (summed over replicas)."""
    return np.asarray(keras.ops.convert_to_numpy(self.total_cm), dtype=np.int64)


class PixelAccuracy(keras.metrics.Mean):
  """Fraction of valid pixels whose arg-max class is right."""

  def __init__(self, name: str = "pixel_accuracy", ignore_label: int = voc.IGNORE_LABEL, **kwargs):
    super().__init__(name=name, **kwargs)
    self.ignore_label = ignore_label

  def update_state(self, y_true, y_pred, sample_weight=None):
    labels = tf.cast(tf.reshape(y_true, [-1]), tf.int32)
    predicted = tf.reshape(tf.argmax(y_pred, axis=-1, output_type=tf.int32), [-1])
    valid = tf.cast(tf.not_equal(labels, self.ignore_label), self.dtype)
    correct = tf.cast(tf.equal(labels, predicted), self.dtype) * valid
    return super().update_state(correct, sample_weight=valid)


def count_confusion(
  truth: np.ndarray, predicted: np.ndarray, num_classes: int, ignore_label: int = voc.IGNORE_LABEL
) -> np.ndarray:
  """[truth, prediction] pixel counts of one image's valid pixels (the numpy twin of MeanIoU's update)."""
  valid = truth != ignore_label
  index = truth[valid].astype(np.int64) * num_classes + predicted[valid]
  return np.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def summarize_confusion(confusion: np.ndarray, class_names=voc.CLASS_NAMES) -> dict:
  """The figures papers report from a confusion matrix [truth, prediction]: mIoU, global pixel accuracy, mean
  class accuracy (the mean of each class's recall), per-class IoU and accuracy. Classes never seen nor predicted
  are left out of mIoU (as Keras's MeanIoU does), classes absent from the truth out of the mean class accuracy;
  either is reported as None."""
  confusion = np.asarray(confusion, dtype=np.float64)
  true_positives = np.diag(confusion)
  truth = confusion.sum(1)
  union = confusion.sum(0) + truth - true_positives
  present = union > 0
  iou = np.where(present, true_positives / np.maximum(union, 1), np.nan)
  accuracy = np.where(truth > 0, true_positives / np.maximum(truth, 1), np.nan)
  total = confusion.sum()
  names = list(class_names) if len(class_names) == len(confusion) else [str(i) for i in range(len(confusion))]
  return {
    "miou": float(np.nanmean(iou)) if present.any() else 0.0,
    "pixel_accuracy": float(true_positives.sum() / total) if total else 0.0,
    "mean_class_accuracy": float(np.nanmean(accuracy)) if (truth > 0).any() else 0.0,
    "per_class_iou": {name: (None if np.isnan(v) else float(v)) for name, v in zip(names, iou, strict=True)},
    "per_class_accuracy": {name: (None if np.isnan(v) else float(v)) for name, v in zip(names, accuracy, strict=True)},
    "valid_pixels": int(total),
  }
