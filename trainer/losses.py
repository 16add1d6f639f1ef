"""Per-pixel cross-entropy over valid pixels (label 255 ignored), with class weights and hard-pixel mining."""

from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

from contracts import voc

CLASS_WEIGHTINGS = ("", "median_frequency", "inverse_log")


def class_weights_from_pixels(
  class_pixels: Sequence[int], image_pixels: Sequence[int], method: str
) -> tuple[float, ...]:
  """Class weights from a training split's pixel counts: `class_pixels[c]`, the pixels of class c;
  `image_pixels[c]`, the labelled pixels of the images holding class c.

  median_frequency (Eigen & Fergus 2015; SegNet on CamVid): frequency f_c = class_pixels / image_pixels,
  weight median(f) / f_c. inverse_log (ENet, Paszke et al. 2016): share p_c = class_pixels / all labelled pixels,
  weight 1 / ln(1.02 + p_c), bounded by 1/ln(1.02) ~ 50. A class without pixels gets 1 (it never weighs).
  """
  pixels = np.asarray(class_pixels, np.float64)
  present = pixels > 0
  if not present.any():
    raise ValueError("no labelled pixels to weigh the classes by")
  weights = np.ones_like(pixels)
  if method == "median_frequency":
    frequency = pixels[present] / np.maximum(np.asarray(image_pixels, np.float64)[present], 1)
    weights[present] = np.median(frequency) / frequency
  elif method == "inverse_log":
    weights[present] = 1.0 / np.log(1.02 + pixels[present] / pixels.sum())
  else:
    raise ValueError(f"unknown class weighting {method!r}: one of {', '.join(CLASS_WEIGHTINGS[1:])}")
  return tuple(float(w) for w in weights)


class SegmentationLoss(keras.losses.Loss):
  """Mean cross-entropy of the valid pixels of a batch.

  `top_k_percent_pixels` < 1 keeps only the hardest fraction of the valid pixels (DeepLab's hard-pixel mining).
  Padding and object boundaries carry the ignore label and so never contribute, whatever the crop.
  """

  def __init__(
    self,
    num_classes: int,
    *,
    class_weights: Sequence[float] = (),
    top_k_percent_pixels: float = 1.0,
    ignore_label: int = voc.IGNORE_LABEL,
    name: str = "segmentation_loss",
    **kwargs,
  ):
    super().__init__(name=name, **kwargs)
    if class_weights and len(class_weights) != num_classes:
      raise ValueError(f"class_weights has {len(class_weights)} values, expected num_classes={num_classes}")
    if not 0.0 < top_k_percent_pixels <= 1.0:
      raise ValueError(f"top_k_percent_pixels must be in (0, 1], got {top_k_percent_pixels}")
    self.num_classes = num_classes
    self.class_weights = tuple(float(w) for w in class_weights)
    self.top_k_percent_pixels = float(top_k_percent_pixels)
    self.ignore_label = ignore_label

  def call(self, y_true, y_pred):
    # Static shapes throughout (no boolean_mask), so the same loss compiles under XLA on TPUs.
    labels = tf.reshape(tf.cast(y_true, tf.int32), [-1])
    logits = tf.reshape(tf.cast(y_pred, tf.float32), [-1, self.num_classes])
    valid = tf.not_equal(labels, self.ignore_label)
    safe_labels = tf.where(valid, labels, 0)
    weights = tf.cast(valid, tf.float32)
    if self.class_weights:
      weights *= tf.gather(tf.constant(self.class_weights, tf.float32), safe_labels)
    losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=safe_labels, logits=logits) * weights
    num_valid = tf.reduce_sum(tf.cast(valid, tf.float32))
    if self.top_k_percent_pixels < 1.0:
      k = tf.maximum(1, tf.cast(tf.cast(tf.size(losses), tf.float32) * self.top_k_percent_pixels, tf.int32))
      losses, _ = tf.math.top_k(losses, k=k, sorted=False)  # Ignored pixels have loss 0: never the hardest.
      num_valid = tf.minimum(num_valid, tf.cast(k, tf.float32))
    # Per-pixel values whose plain mean is the mean over valid pixels: Keras's "sum_over_batch_size" reduction
    # then takes that mean and divides it by the number of replicas, as tf.distribute's gradient sum requires
    # (a scalar returned here would skip that scaling). A crop made only of ignored pixels gives 0, not NaN.
    return losses * tf.math.divide_no_nan(tf.cast(tf.size(losses), tf.float32), num_valid)

  def get_config(self):
    return {
      **super().get_config(),
      "num_classes": self.num_classes,
      "class_weights": self.class_weights,
      "top_k_percent_pixels": self.top_k_percent_pixels,
      "ignore_label": self.ignore_label,
    }
