"""Our TFLite exports (float32, int8) against Google's published DeepLabV3-MNv2 VOC model: CPU latency and mIoU.

  .venv/bin/python benchmarks/export_vs_reference.py --model_dir=runs/voc_sample     # data/voc_sample's val split
  .venv/bin/python benchmarks/export_vs_reference.py --model_dir=runs/x --exports_dir=exports/x --num_images=50

Contenders, all 1x513x513x3 in, class ids out, on the TFLite interpreter (LiteRT's when ai-edge-litert is
installed, else tf.lite's) with --num_threads (2) threads:
  ours float32  `inference.exporting.convert_tflite(model)`: float32 raw pixels in;
  ours int8     the same, full-integer, calibrated on the first --num_calibration training images; uint8 in;
  reference     --reference, by default ../shared/models/deeplabv3_mnv2_pascal_quant.tflite (DeepLabV3,
                MobileNetV2 1.0, VOC train_aug + COCO; uint8 raw pixels in).
The TFLite files come from --exports_dir (what `python -m inference.export --tflite --int8` wrote) when given, else
are converted here. mIoU: the first --num_images (0: all) val images, each padded bottom/right to 513 (the
reference with 128 as ../shared/NOTES.md does, ours with the mean pixel through `inference.exporting.tflite_predict`),
the prediction cropped back, 255 ignored. Latency: median of `invoke()` alone, batch 1, on one padded val image;
the contenders take turns each round (--rounds), so that other load on the machine slows all alike.

The figures are in the README's results.
"""

from collections.abc import Callable
import functools
import json
import os
import pathlib
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from absl import app
from absl import flags
import numpy as np
import tensorflow as tf

from deeplab import metrics as metrics_lib
from deeplab import pixels
from deeplab import run_folder
from deeplab import tfrecords
from inference import exporting
from inference import importing
from inference import tflite_interpreter

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
REFERENCE = (
  pathlib.Path(os.environ.get("SEG_SHARED_DIR", REPO_ROOT.parent / "shared"))
  / "models"
  / "deeplabv3_mnv2_pascal_quant.tflite"
)

FLAGS = flags.FLAGS
flags.DEFINE_string("model_dir", None, "A training run's folder (or an imported published model's).")
flags.DEFINE_integer("num_calibration", 200, "int8 calibration images, when converting here (no --exports_dir).")
flags.DEFINE_string(
  "records_dir", str(REPO_ROOT / "data" / "voc_sample"), "Folder with the run's train-*/val-*.tfrecord shards."
)
flags.DEFINE_string(
  "exports_dir", None, "Where inference.export wrote model_float32.tflite and model_int8.tflite; default: convert here."
)
flags.DEFINE_integer("num_images", 0, "Val images scored (0: all).")
flags.DEFINE_integer("num_threads", 2, "Interpreter threads.")
flags.DEFINE_integer("rounds", 20, "Latency rounds (each contender invoked once per round, in turns).")
flags.DEFINE_string("json_out", None, "Also write the figures here as JSON.")
flags.DEFINE_string("reference", str(REFERENCE), "Google's TFLite file to compare with (e.g. the depth-0.5 one).")


def our_tflite_models(model_dir: str) -> dict[str, bytes]:
  if FLAGS.exports_dir:
    return {
      name: tf.io.gfile.GFile(f"{FLAGS.exports_dir}/{file}", "rb").read()
      for name, file in (("ours float32", exporting.FLOAT32_TFLITE), ("ours int8", exporting.INT8_TFLITE))
    }
  _, model, weights = run_folder.load_run(model_dir)
  print(
    f"converting {weights} to TFLite float32 and int8 ({FLAGS.num_calibration} calibration images) ...",
    file=sys.stderr,
    flush=True,
  )
  calibration = exporting.calibration_images(f"{FLAGS.records_dir}/train-*.tfrecord", FLAGS.num_calibration)
  return {"ours float32": exporting.convert_tflite(model), "ours int8": exporting.convert_tflite(model, calibration)}


def score(predictors: dict, file_pattern: str, num_images: int, num_classes: int = 21) -> dict[str, dict]:
  confusions = {name: np.zeros((num_classes, num_classes), np.int64) for name in predictors}
  count = 0
  for image, label in tfrecords.eval_dataset(file_pattern, batch_size=1).take(num_images or -1):
    image = image[0].numpy().astype(np.uint8)
    truth = label[0].numpy()
    for name, predict in predictors.items():
      confusions[name] += metrics_lib.count_confusion(truth, predict(image), num_classes)
    count += 1
    if count % 20 == 0:
      print(f"scored {count} images", file=sys.stderr, flush=True)
  return {
    name: {**metrics_lib.summarize_confusion(confusion), "images": count} for name, confusion in confusions.items()
  }


def latencies(interpreters: dict, image: np.ndarray, rounds: int) -> dict[str, float]:
  """Median ms of invoke() alone, the input set once (a padded real image), the contenders in turns."""
  for interpreter in interpreters.values():
    [input_details] = interpreter.get_input_details()
    padded = np.full(input_details["shape"], pixels.MEAN_PIXEL_UINT8, np.uint8)
    padded[0, : image.shape[0], : image.shape[1]] = image
    interpreter.set_tensor(input_details["index"], padded.astype(input_details["dtype"]))
    interpreter.invoke()  # Warm-up: XNNPACK packs its weights on the first run.
  times: dict[str, list[float]] = {name: [] for name in interpreters}
  for _ in range(rounds):
    for name, interpreter in interpreters.items():
      start = time.perf_counter()
      interpreter.invoke()
      times[name].append(1000 * (time.perf_counter() - start))
  return {name: statistics.median(values) for name, values in times.items()}


def main(argv):
  del argv
  val = f"{FLAGS.records_dir}/val-*.tfrecord"
  contents = {**our_tflite_models(FLAGS.model_dir), "reference": pathlib.Path(FLAGS.reference).read_bytes()}
  interpreters = {
    name: tflite_interpreter.make_interpreter(content, FLAGS.num_threads) for name, content in contents.items()
  }
  predictors: dict[str, Callable[[np.ndarray], np.ndarray]] = {  # image -> class ids
    name: functools.partial(exporting.tflite_predict, interpreter)
    for name, interpreter in interpreters.items()
    if name != "reference"
  }
  predictors["reference"] = lambda image: importing.tflite_classes(interpreters["reference"], image)
  scores = score(predictors, val, FLAGS.num_images)
  first_image = next(iter(tfrecords.eval_dataset(val, batch_size=1)))[0][0].numpy().astype(np.uint8)
  medians = latencies(interpreters, first_image, FLAGS.rounds)

  print(f"{'model':<14}{'MB':>7}{'ms (median)':>13}{'mIoU':>8}{'pixel acc.':>12}")
  figures = {}
  for name in contents:
    figures[name] = {
      "bytes": len(contents[name]),
      "latency_ms": medians[name],
      "miou": scores[name]["miou"],
      "pixel_accuracy": scores[name]["pixel_accuracy"],
      "images": scores[name]["images"],
    }
    print(
      f"{name:<14}{len(contents[name]) / 2**20:>7.2f}{medians[name]:>13.1f}{scores[name]['miou']:>8.4f}"
      f"{scores[name]['pixel_accuracy']:>12.4f}"
    )
  print(
    f"({scores['reference']['images']} val images of {val}; {FLAGS.num_threads} interpreter threads, "
    f"{FLAGS.rounds} rounds)"
  )
  if FLAGS.json_out:
    pathlib.Path(FLAGS.json_out).write_text(json.dumps({"model_dir": FLAGS.model_dir, "figures": figures}, indent=2))


if __name__ == "__main__":
  flags.mark_flag_as_required("model_dir")
  app.run(main)
