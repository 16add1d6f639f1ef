"""The loss and the metrics against hand computations: void pixels never count, weights and mining do."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from deeplab import metrics
from trainer import losses


def _logits(labels, num_classes, confidence=4.0, wrong=()):
  """Logits that favour `labels` except at the flat indices in `wrong`, which favour class 0."""
  logits = np.zeros(labels.shape + (num_classes,), np.float32)
  flat = logits.reshape(-1, num_classes)
  for i, c in enumerate(labels.reshape(-1)):
    flat[i, 0 if i in wrong else (c if c < num_classes else 0)] = confidence
  return logits


def _ce(logit_row, label):
  return float(-tf.nn.log_softmax(logit_row)[label])


def test_loss_ignores_void_pixels_and_averages_over_valid_ones():
  labels = np.array([[[1, 2], [255, 255]]], np.int32)
  logits = np.random.default_rng(0).normal(size=(1, 2, 2, 3)).astype(np.float32)
  expected = np.mean([_ce(logits[0, 0, 0], 1), _ce(logits[0, 0, 1], 2)])
  got = float(losses.SegmentationLoss(3)(labels, logits))
  # The same cross-entropies by another op (sparse_softmax_cross_entropy_with_logits against log_softmax): a few
  # float32 roundings of values ~1 apart (~1e-7); 1e-5 here and below is slack for that.
  assert got == pytest.approx(expected, rel=1e-5)
  # Whatever the void pixels' logits are, the loss does not move.
  logits[0, 1] = 100.0
  assert float(losses.SegmentationLoss(3)(labels, logits)) == pytest.approx(expected, rel=1e-5)


def test_loss_of_an_all_void_crop_is_zero_not_nan():
  labels = np.full((1, 4, 4), 255, np.int32)
  assert float(losses.SegmentationLoss(21)(labels, np.zeros((1, 4, 4, 21), np.float32))) == 0.0


def test_class_weights_scale_each_pixel():
  labels = np.array([[[0, 1]]], np.int32)
  logits = np.random.default_rng(1).normal(size=(1, 1, 2, 2)).astype(np.float32)
  weighted = float(losses.SegmentationLoss(2, class_weights=(1.0, 3.0))(labels, logits))
  expected = (_ce(logits[0, 0, 0], 0) + 3.0 * _ce(logits[0, 0, 1], 1)) / 2
  assert weighted == pytest.approx(expected, rel=1e-5)


def test_hard_pixel_mining_keeps_only_the_hardest_fraction():
  labels = np.array([[[1, 1, 1, 1]]], np.int32)
  logits = np.zeros((1, 1, 4, 2), np.float32)
  logits[0, 0, :, 1] = [5.0, 2.0, 0.0, -3.0]  # Per-pixel losses increase from left to right.
  per_pixel = [_ce(logits[0, 0, i], 1) for i in range(4)]
  mined = float(losses.SegmentationLoss(2, top_k_percent_pixels=0.5)(labels, logits))
  assert mined == pytest.approx(np.mean(sorted(per_pixel)[-2:]), rel=1e-5)


def test_bad_loss_settings_are_refused():
  with pytest.raises(ValueError, match="class_weights"):
    losses.SegmentationLoss(21, class_weights=(1.0, 2.0))
  with pytest.raises(ValueError, match="top_k"):
    losses.SegmentationLoss(21, top_k_percent_pixels=0.0)


def test_miou_and_pixel_accuracy_ignore_void_and_match_a_hand_count():
  labels = np.array([[[0, 0, 1, 1], [2, 2, 255, 255]]], np.int32)
  # Predict class 0 for one of the class-1 pixels and for both void pixels.
  logits = _logits(labels, 3, wrong={2, 6, 7})
  miou = metrics.MeanIoU(num_classes=3)
  miou.update_state(labels, logits)
  accuracy = metrics.PixelAccuracy()
  accuracy.update_state(labels, logits)
  # class 0: tp 2, union 3; class 1: tp 1, union 2; class 2: tp 2, union 2.
  assert float(miou.result()) == pytest.approx(np.mean([2 / 3, 1 / 2, 1.0]), rel=1e-6)
  assert float(accuracy.result()) == pytest.approx(5 / 6)
  report = metrics.summarize_confusion(miou.confusion_matrix(), class_names=("a", "b", "c"))
  assert report["miou"] == pytest.approx(float(miou.result()), rel=1e-6)
  assert report["pixel_accuracy"] == pytest.approx(5 / 6)
  assert report["per_class_iou"] == pytest.approx({"a": 2 / 3, "b": 0.5, "c": 1.0})
  assert report["valid_pixels"] == 6


def test_miou_matches_keras_on_random_batches_with_void_pixels():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 21, size=(4, 33, 47)).astype(np.uint8)
  labels[rng.random(labels.shape) < 0.2] = 255
  logits = rng.normal(size=(4, 33, 47, 21)).astype(np.float32)
  ours = metrics.MeanIoU(num_classes=21)
  reference = keras.metrics.MeanIoU(num_classes=21, ignore_class=255, sparse_y_pred=False)
  for half in (slice(0, 2), slice(2, 4)):  # Accumulates over updates.
    ours.update_state(labels[half], logits[half])
    reference.update_state(labels[half], logits[half])
  # Exact: both count the argmax of the same float32 logits (normal draws never tie); the results are float32
  # means of the same counts.
  np.testing.assert_array_equal(ours.confusion_matrix(), keras.ops.convert_to_numpy(reference.total_cm))
  assert ours.confusion_matrix().sum() == int((labels != 255).sum())
  assert float(ours.result()) == pytest.approx(float(reference.result()), rel=1e-6)


def test_classes_absent_from_truth_and_prediction_are_left_out_of_the_mean():
  confusion = np.zeros((21, 21), np.int64)
  confusion[0, 0], confusion[15, 15], confusion[15, 0] = 90, 8, 2
  report = metrics.summarize_confusion(confusion)
  assert report["per_class_iou"]["cat"] is None
  assert report["miou"] == pytest.approx(np.mean([90 / 92, 8 / 10]))


def test_the_figures_papers_report_from_a_hand_made_confusion_matrix():
  # Rows: truth, columns: prediction. Class "c" is predicted but never true: no accuracy, but an IoU of 0.
  confusion = np.array([[50, 10, 0], [5, 20, 15], [0, 0, 0]])
  report = metrics.summarize_confusion(confusion, ("a", "b", "c"))
  assert report["pixel_accuracy"] == pytest.approx(70 / 100)  # global: the diagonal over every pixel
  assert report["per_class_accuracy"] == pytest.approx({"a": 50 / 60, "b": 20 / 40, "c": None})
  assert report["mean_class_accuracy"] == pytest.approx((50 / 60 + 20 / 40) / 2)
  assert report["per_class_iou"] == pytest.approx({"a": 50 / 65, "b": 20 / 50, "c": 0.0})
  assert report["miou"] == pytest.approx((50 / 65 + 20 / 50 + 0.0) / 3)


def test_class_weights_from_hand_computed_pixel_counts():
  # Three images of 100 labelled pixels: a in all three (240 px), b in two (50 px), c in one (10 px); d absent.
  class_pixels, image_pixels = (240, 50, 10, 0), (300, 200, 100, 0)
  frequency = np.array([240 / 300, 50 / 200, 10 / 100])  # SegNet's: a class's pixels over its images' pixels
  expected = np.median(frequency) / frequency
  assert losses.class_weights_from_pixels(class_pixels, image_pixels, "median_frequency") == pytest.approx(
    (*expected, 1.0)
  )
  share = np.array([240, 50, 10]) / 300
  assert losses.class_weights_from_pixels(class_pixels, image_pixels, "inverse_log") == pytest.approx(
    (*(1 / np.log(1.02 + share)), 1.0)
  )
  with pytest.raises(ValueError, match="unknown class weighting"):
    losses.class_weights_from_pixels(class_pixels, image_pixels, "median")
