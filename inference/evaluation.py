"""Scoring a run at each image's native size, optionally over several scales and mirrored (what
python -m inference.evaluate runs; inference.predict and the benchmarks predict through make_predictor).

The class probabilities of every scale (and mirror) are averaged at the image's own size, so padding is never
scored; with pad_to, each image is padded first as research/deeplab scored its models.
"""

import json

import cv2
import numpy as np
import tensorflow as tf

from contracts import console
from contracts import run_dir
from contracts import shards
from deeplab import metrics as metrics_lib
from deeplab import pixels
from deeplab import run_folder
from deeplab import tfrecords
from deeplab import visualize


def make_predictor(model, scales: list[float], flip: bool, pad_to: int = 0):
  """image [H, W, 3] float -> class probabilities [H, W, C], averaged over scales (and mirrors).

  pad_to > 0: each scaled image is padded bottom/right with the mean pixel to at least pad_to x pad_to, and the
  prediction cropped back: how DeepLab scored its models (always on 513 x 513 canvases).
  """

  @tf.function(reduce_retracing=True)
  def predict(image):
    size = tf.shape(image)[:2]
    total = 0.0
    for scale in scales:
      scaled_size = tf.maximum(tf.cast(tf.round(tf.cast(size, tf.float32) * scale), tf.int32), 1)
      batch = tf.image.resize(image[tf.newaxis], scaled_size, method="bilinear")
      if flip:
        batch = tf.concat([batch, tf.reverse(batch, [2])], axis=0)
      if pad_to:  # After the mirror, so that both pictures sit top-left.
        padding = tf.maximum(pad_to - scaled_size, 0)
        batch = tf.pad(batch, [[0, 0], [0, padding[0]], [0, padding[1]], [0, 0]], constant_values=pixels.MEAN_PIXEL)
      probabilities = tf.nn.softmax(tf.cast(model(batch, training=False), tf.float32))
      probabilities = probabilities[:, : scaled_size[0], : scaled_size[1]]
      if flip:
        probabilities = probabilities[:1] + tf.reverse(probabilities[1:], [2])
      total += tf.image.resize(probabilities, size, method="bilinear")[0]
    return total

  return predict


def confusion_of_split(
  model, data_dir: str, split: str, num_classes: int, scales: list[float], flip: bool, pad_to: int = 0
) -> np.ndarray:
  """The [truth, prediction] confusion matrix of a split's valid pixels (255 ignored)."""
  predict = make_predictor(model, scales, flip, pad_to)
  confusion = np.zeros((num_classes, num_classes), np.int64)
  # The total from the conversion's summary when there is one; counting the shards would read them twice.
  has_summary = tf.io.gfile.exists(shards.summary_path(data_dir, split))
  progress = console.Progress(split, shards.count_examples(data_dir, split) if has_summary else None, unit="images")
  for image, label in tfrecords.eval_dataset(shards.split_files(data_dir, split), batch_size=1):
    predicted = np.argmax(predict(image[0]).numpy(), axis=-1)
    confusion += metrics_lib.count_confusion(label[0].numpy(), predicted, num_classes)
    progress.add()
  progress.close()
  return confusion


def evaluate_run(
  model_dir: str,
  data_dir: str,
  *,
  split: str = "val",
  scales=(1.0,),
  flip: bool = False,
  pad_to: int = 0,
  weights: str | None = None,
) -> tuple[dict, str]:
  """Scores a run's weights (default its best, else final) on a split; writes the report and the confusion
  picture into the run (contracts/run_dir.py's eval_<split>[_pad<N>]). Returns (report, their path stem)."""
  config, model, found = run_folder.load_run(model_dir, weights)
  scales = [float(s) for s in scales]
  confusion = confusion_of_split(model, data_dir, split, config.model.num_classes, scales, flip, pad_to)
  class_names = run_folder.class_names_of(config)
  report = metrics_lib.summarize_confusion(confusion, class_names)
  report.update(split=split, scales=scales, flip=flip, pad_to=pad_to, weights=found)
  stem = run_dir.evaluation_stem(model_dir, split, pad_to)
  with tf.io.gfile.GFile(stem + ".json", "w") as f:
    json.dump(report, f, indent=2)
  _, png = cv2.imencode(".png", visualize.confusion_matrix_picture(confusion, class_names)[..., ::-1])
  with tf.io.gfile.GFile(stem + "_confusion.png", "wb") as f:
    f.write(png.tobytes())
  return report, stem


def iou_table(report: dict) -> str:
  """The per-class IoU and accuracy, mean IoU, global pixel accuracy and mean class accuracy of a report, as
  printed after an evaluation."""
  width = max(20, 2 + max(len(name) for name in report["per_class_iou"]))

  def cell(value) -> str:
    return f"{'-' if value is None else f'{value:.4f}':>9}"

  lines = [f"{'class':<{width}}{'IoU':>9}{'accuracy':>9}"]
  lines += [
    f"{name:<{width}}{cell(iou)}{cell(report['per_class_accuracy'].get(name))}"
    for name, iou in report["per_class_iou"].items()
  ]
  lines += [
    f"{'mean IoU':<{width}}{cell(report['miou'])}",
    f"{'mean class accuracy':<{width}}{'':>9}{cell(report['mean_class_accuracy'])}",
    f"{'global pixel acc.':<{width}}{'':>9}{cell(report['pixel_accuracy'])}",
  ]
  return "\n".join(lines)
