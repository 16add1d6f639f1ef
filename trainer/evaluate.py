"""Scores a trained run at each image's native size, optionally over several scales and mirrored.

  python -m trainer.evaluate --model_dir=runs/smoke --data_dir=data/tfrecords [--split=val] \
      [--scales=0.5,0.75,1.0,1.25,1.5,1.75] [--flip] [--pad_to=513]

Rebuilds the model from the run's config.json, loads its best (else final) weights, and averages the class
probabilities of every scale (and mirror) at the image's own size, so padding is never scored. Prints the
per-class IoU table and writes eval_<split>.json and eval_<split>_confusion.png into model_dir.
"""

import json
import os
import sys
import time

from absl import app
from absl import flags
import cv2
import numpy as np
import tensorflow as tf

from launch import cli
from trainer import input_pipeline
from trainer import metrics as metrics_lib
from trainer import train
from trainer import visualize

_MODEL_DIR = flags.DEFINE_string("model_dir", None, "A training run's folder (config.json, checkpoints/); local "
                                 "or gs://.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Folder with the {split}-*.tfrecord shards; local or gs://.")
_SPLIT = flags.DEFINE_string("split", "val", "Split to score.")
cli.register_check("split", cli.matching(cli.SPLIT), cli.SPLIT_ACCEPTS)
_SCALES = flags.DEFINE_list("scales", ["1.0"], "Input scales whose probabilities are averaged.")
cli.register_check("scales", cli.each(cli.positive_number), "comma-separated numbers > 0, e.g. 0.75,1.0,1.25")
_FLIP = flags.DEFINE_bool("flip", False, "Also average the mirrored image's probabilities.")
_PAD_TO = flags.DEFINE_integer("pad_to", 0, "Pad each (scaled) image bottom/right to at least this square with the "
                               "mean pixel before inference, as DeepLab evaluated (513); the padding is never "
                               "scored. 0: each image at its own size.", lower_bound=0)
_WEIGHTS = flags.DEFINE_string("weights", None, "A .weights.h5 file; default the run's best, else its final.")


load_run = train.load_run  # trainer.predict, trainer.export and the benchmarks load runs through here.


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
        batch = tf.pad(batch, [[0, 0], [0, padding[0]], [0, padding[1]], [0, 0]],
                       constant_values=input_pipeline.MEAN_PIXEL)
      probabilities = tf.nn.softmax(tf.cast(model(batch, training=False), tf.float32))
      probabilities = probabilities[:, :scaled_size[0], :scaled_size[1]]
      if flip:
        probabilities = probabilities[:1] + tf.reverse(probabilities[1:], [2])
      total += tf.image.resize(probabilities, size, method="bilinear")[0]
    return total
  return predict


def evaluate(model, data_dir: str, split: str, num_classes: int, scales: list[float], flip: bool,
             pad_to: int = 0) -> np.ndarray:
  """The [truth, prediction] confusion matrix of a split's valid pixels (255 ignored)."""
  predict = make_predictor(model, scales, flip, pad_to)
  confusion = np.zeros((num_classes, num_classes), np.int64)
  start = last = time.perf_counter()
  count = 0
  for image, label in input_pipeline.eval_dataset(train.split_files(data_dir, split), batch_size=1):
    predicted = np.argmax(predict(image[0]).numpy(), axis=-1)
    confusion += metrics_lib.count_confusion(label[0].numpy(), predicted, num_classes)
    count += 1
    if time.perf_counter() - last > 5:
      last = time.perf_counter()
      print(f"{split}: {count} images ({count / (last - start):.1f}/s)", file=sys.stderr, flush=True)
  return confusion


def main(argv):
  del argv
  try:
    config, model, weights = load_run(_MODEL_DIR.value, _WEIGHTS.value)
    scales = [float(s) for s in _SCALES.value]
    confusion = evaluate(model, _DATA_DIR.value, _SPLIT.value, config.model.num_classes, scales, _FLIP.value,
                         _PAD_TO.value)
  except (train.DataError, ValueError) as error:
    cli.exit_with(str(error))
  class_names = train.class_names_of(config)
  report = metrics_lib.summarize_confusion(confusion, class_names)
  report.update(split=_SPLIT.value, scales=scales, flip=_FLIP.value, pad_to=_PAD_TO.value, weights=weights)
  width = max(14, 2 + max(len(name) for name in class_names))
  print(f"{'class':<{width}}IoU")
  for name, value in report["per_class_iou"].items():
    print(f"{name:<{width}}{'-' if value is None else f'{value:.4f}'}")
  print(f"{'mean IoU':<{width}}{report['miou']:.4f}\n{'pixel acc.':<{width}}{report['pixel_accuracy']:.4f}")
  stem = os.path.join(_MODEL_DIR.value, f"eval_{_SPLIT.value}" + (f"_pad{_PAD_TO.value}" if _PAD_TO.value else ""))
  with tf.io.gfile.GFile(stem + ".json", "w") as f:
    json.dump(report, f, indent=2)
  _, png = cv2.imencode(".png", visualize.confusion_matrix_picture(confusion, class_names)[..., ::-1])
  with tf.io.gfile.GFile(stem + "_confusion.png", "wb") as f:
    f.write(png.tobytes())
  print(f"wrote {stem}.json and {stem}_confusion.png")


if __name__ == "__main__":
  # Required only when this runs as a program: trainer.predict and trainer.export import it for its functions.
  flags.mark_flags_as_required(["model_dir", "data_dir"])
  app.run(main, flags_parser=cli.parse_flags)
