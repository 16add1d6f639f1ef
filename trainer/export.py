r"""Exports a trained run for serving: a SavedModel that takes encoded images, and TFLite float32 / int8 models.

  python -m trainer.export --model_dir=runs/x --output_dir=exports/x [--tflite] \
      [--int8 --calibration_data='data/tfrecords/train-*.tfrecord'] [--data_dir=data/tfrecords | --check_data=GLOB]

Writes into output_dir:
  saved_model/          `serving_default(image_bytes: string [N])` (JPEG or PNG, any sizes) -> `masks` uint8
                        [N, H, W] (each image's class ids at its top-left, 255 beyond it), `heights`, `widths` int32
                        [N]. Each image runs at its own size, exactly as the Keras model would (TF Serving ready).
  model_float32.tflite  (--tflite) 1x513x513x3 float32 raw pixels [0, 255] -> 1x513x513 uint8 class ids.
  model_int8.tflite     (--int8) the same, full-integer (int8 inside), uint8 input quantized with the input's
                        scale/zero point (1.0/0, i.e. raw pixels, when calibration images span 0..255).
  class_names.txt       the run's class names, one per line, in class-id order (what trainer.predict names the
                        classes of a --saved_model by).
  export_report.json    with --check_data (or --data_dir: the run's eval split): mIoU of the Keras model and of
                        each export on the same images; a table is printed too.
TFLite has the fixed input of Google's reference model (513x513): an image is padded bottom/right with the mean
pixel and the output cropped back (`tflite_predict`); a larger image is scaled down to fit and its mask back up.
"""

import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator

from absl import app
from absl import flags
from absl import logging
import cv2
import keras
import numpy as np
import tensorflow as tf

from launch import cli
from preprocessing import schema
from preprocessing import split_outputs
from trainer import evaluate
from trainer import input_pipeline
from trainer import int8_ranges
from trainer import metrics as metrics_lib
from trainer import tflite_interpreter
from trainer import train

TFLITE_SIZE = 513
SAVED_MODEL_DIR = "saved_model"
FLOAT32_TFLITE = "model_float32.tflite"
INT8_TFLITE = "model_int8.tflite"
REPORT = "export_report.json"
PROGRESS_SECONDS = 5.0

FLAGS = flags.FLAGS


def define_flags() -> None:
  """This program's flags, defined only when it runs: importing this module (tests, trainer.predict, benchmarks)
  must not claim names such as --output_dir that preprocessing.make_tfrecords defines too."""
  for name in ("model_dir", "weights", "data_dir"):
    flags.declare_key_flag(name)  # trainer.evaluate's flags (same meaning), listed in this program's --help
  flags.DEFINE_string("output_dir", None, "Where the exports and export_report.json go.")
  flags.DEFINE_bool("tflite", False, f"Also write {FLOAT32_TFLITE}.")
  flags.DEFINE_bool("int8", False, f"Also write {INT8_TFLITE} (needs --calibration_data).")
  flags.DEFINE_string("calibration_data", None, "TFRecord glob(s) of (training) images to calibrate int8 ranges on.")
  flags.DEFINE_integer("num_calibration", 200, "Calibration images (the first ones of the glob).", lower_bound=1)
  flags.DEFINE_enum("int8_ranges", "mean", int8_ranges.METHODS, "Activation ranges: the mean of each calibration "
                    "image's min and max (what quantization-aware training tracks), or TFLite's min and max over "
                    "all of them.")
  flags.DEFINE_string("check_data", None, "TFRecord glob(s) to score every export on; default the run's eval "
                      "split under --data_dir, if given; neither: no check.")
  flags.DEFINE_integer("num_check_images", 100, "Images scored by the check (0: all).", lower_bound=0)
  flags.mark_flags_as_required(["model_dir", "output_dir"])
  flags.register_multi_flags_validator(
      ["int8", "calibration_data"], lambda values: not values["int8"] or bool(values["calibration_data"]),
      "--int8 needs --calibration_data=TFRECORD_GLOB (training images to calibrate on)")


# ---------------------------------------------------------------------------------------------------------------
# SavedModel
# ---------------------------------------------------------------------------------------------------------------


def _serving_fn(model: keras.Model) -> Callable:
  """image_bytes [N] -> {masks, heights, widths}; one model call per image at its own size, since padding would
  change the prediction (the ASPP's image pooling averages over the padding too)."""
  def serve(image_bytes):
    count = tf.shape(image_bytes)[0]

    def predict_one(i, masks, heights, widths):
      image = input_pipeline.decode_image(image_bytes[i])  # The training pipeline's decoding, JPEG IDCT included.
      logits = model(tf.cast(image, tf.float32)[tf.newaxis], training=False)[0]
      mask = tf.cast(tf.argmax(logits, axis=-1), tf.uint8)
      return i + 1, masks.write(i, mask), heights.write(i, tf.shape(mask)[0]), widths.write(i, tf.shape(mask)[1])

    masks = tf.TensorArray(tf.uint8, size=count, infer_shape=False, element_shape=tf.TensorShape([None, None]))
    _, masks, heights, widths = tf.while_loop(
        lambda i, *_: i < count, predict_one,
        [0, masks, tf.TensorArray(tf.int32, size=count), tf.TensorArray(tf.int32, size=count)])
    heights, widths = heights.stack(), widths.stack()
    max_height = tf.maximum(tf.reduce_max(heights), 0)  # 0, not INT_MIN, for an empty request.
    max_width = tf.maximum(tf.reduce_max(widths), 0)
    padded = tf.map_fn(
        lambda i: tf.pad(masks.read(i), [[0, max_height - heights[i]], [0, max_width - widths[i]]],
                         constant_values=input_pipeline.IGNORE_LABEL),
        tf.range(count), fn_output_signature=tf.TensorSpec([None, None], tf.uint8))
    return {"masks": padded, "heights": heights, "widths": widths}
  return serve


def export_saved_model(model: keras.Model, export_dir: str) -> None:
  """A SavedModel whose `serving_default` maps encoded images to padded class-id masks (module docstring)."""
  archive = keras.export.ExportArchive()
  archive.track(model)
  archive.add_endpoint("serving_default", _serving_fn(model),
                       input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
  archive.write_out(export_dir, verbose=False)


# ---------------------------------------------------------------------------------------------------------------
# TFLite
# ---------------------------------------------------------------------------------------------------------------


def convert_tflite(model: keras.Model, representative_images: Callable[[], Iterator[np.ndarray]] | None = None,
                   size: int = TFLITE_SIZE, ranges: str = "mean") -> bytes:
  """A 1 x size x size x 3 TFLite model that outputs uint8 class ids: float32 when `representative_images` is
  None, else full-integer int8 calibrated on its float32 [1, size, size, 3] raw-pixel images (uint8 input), with
  activation ranges by `ranges` (int8_ranges.METHODS) and imported weights on their own grid (int8_ranges)."""
  @tf.function(input_signature=[tf.TensorSpec([1, size, size, 3], tf.float32, name="image")])
  def class_ids(image):
    return {"classes": tf.cast(tf.argmax(model(image, training=False), axis=-1), tf.uint8)}

  # Keras 3 models convert through a SavedModel: from_concrete_functions leaves their variables unresolved
  # (READ_VARIABLE ops that read nothing).
  with tempfile.TemporaryDirectory() as saved_model:
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", class_ids)
    archive.write_out(saved_model, verbose=False)
    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model)
    if representative_images is None:
      return converter.convert()
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([image] for image in representative_images())
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.uint8  # Like the reference; the output is integer class ids already.
    if ranges not in int8_ranges.METHODS:
      raise ValueError(f"int8 ranges {ranges!r}: use one of {', '.join(int8_ranges.METHODS)}")
    converter._experimental_calibrate_only = True  # pylint: disable=protected-access
    calibrated = converter.convert()
  if ranges == "mean":
    calibrated_for_quantizer = int8_ranges.with_ranges(
        calibrated, int8_ranges.mean_of_per_image_ranges(calibrated, representative_images))
  else:
    calibrated_for_quantizer = calibrated
  quantized = int8_ranges.quantize(calibrated_for_quantizer, input_type=tf.uint8)
  quantized, kept, total = int8_ranges.keep_weight_grids(quantized, calibrated)
  if kept:
    _progress(f"int8: {kept} of {total} convolution channels keep the quantization grid of their imported weights")
  return quantized


def _records(file_pattern: str, count: int) -> tf.data.Dataset:
  """(encoded image, decoded record) of the first `count` records (0: all), in file order."""
  dataset = tf.data.TFRecordDataset(input_pipeline.list_files(file_pattern))
  if count:
    dataset = dataset.take(count)
  return dataset.map(lambda serialized: (schema.parse_example(serialized)[schema.IMAGE_ENCODED],
                                         input_pipeline.decode_record(serialized)),
                     num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(tf.data.AUTOTUNE)


def _fit_and_pad(image: np.ndarray, size: int, pad_value: float) -> tuple[np.ndarray, tuple[int, int]]:
  """image [h, w, 3] -> float32 [size, size, 3] (scaled down to fit if larger, padded bottom/right) and the
  size of the picture inside it."""
  height, width = image.shape[:2]
  scale = min(1.0, size / max(height, width))
  if scale < 1.0:
    fitted = (max(1, round(height * scale)), max(1, round(width * scale)))
    image = cv2.resize(image, fitted[::-1], interpolation=cv2.INTER_AREA)
  padded = np.full((size, size, 3), pad_value, np.float32)
  padded[:image.shape[0], :image.shape[1]] = image
  return padded, image.shape[:2]


def calibration_images(file_pattern: str, count: int, size: int = TFLITE_SIZE) -> Callable[[], Iterator[np.ndarray]]:
  """The converter's representative dataset: images prepared exactly as `tflite_predict` prepares them."""
  def images():
    start = last = time.perf_counter()
    for index, (_, record) in enumerate(_records(file_pattern, count).as_numpy_iterator(), start=1):
      yield _fit_and_pad(record["image"], size, input_pipeline.MEAN_PIXEL)[0][np.newaxis]
      if time.perf_counter() - last > PROGRESS_SECONDS:
        last = time.perf_counter()
        _progress(f"calibration: {index}/{count} images ({index / (last - start):.1f}/s)")
  return images


def tflite_predict(interpreter, image: np.ndarray) -> np.ndarray:
  """Class ids [h, w] of one uint8 RGB image [h, w, 3] from one of our TFLite exports (real input: raw pixels)."""
  [input_details] = interpreter.get_input_details()
  size = int(input_details["shape"][1])
  padded, (height, width) = _fit_and_pad(image, size, input_pipeline.MEAN_PIXEL)
  dtype = input_details["dtype"]
  if np.issubdtype(dtype, np.integer):
    scale, zero_point = input_details["quantization"]
    limits = np.iinfo(dtype)
    padded = np.clip(np.round(padded / scale + zero_point), limits.min, limits.max)
  interpreter.set_tensor(input_details["index"], padded[np.newaxis].astype(dtype))
  interpreter.invoke()
  classes = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])[0]
  return _crop_back(classes, (height, width), image.shape[:2])


def _crop_back(classes: np.ndarray, fitted: tuple[int, int], shape: tuple[int, int]) -> np.ndarray:
  """The padded input's class ids [size, size] -> uint8 [h, w] of the original image (see _fit_and_pad)."""
  classes = classes[:fitted[0], :fitted[1]].astype(np.uint8)
  if classes.shape != tuple(shape):
    classes = cv2.resize(classes, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
  return classes


# ---------------------------------------------------------------------------------------------------------------
# The check: every export beside the Keras model on the same images
# ---------------------------------------------------------------------------------------------------------------


def check_exports(model: keras.Model, file_pattern: str, num_images: int, *, saved_model_dir: str,
                  tflite_files: dict[str, str], num_classes: int) -> dict:
  """mIoU, pixel accuracy and agreement with the Keras model (fraction of scored pixels with the same class, at
  the same input) of every export, on the same images. Keras runs twice: at each image's own size (what the
  SavedModel does) and padded to the TFLite input (what the TFLite models see), so that the TFLite rows measure
  conversion and quantization, not padding."""
  @tf.function(reduce_retracing=True)
  def keras_classes(image):
    return tf.cast(tf.argmax(model(image[tf.newaxis], training=False)[0], axis=-1), tf.uint8)

  serve = tf.saved_model.load(saved_model_dir).signatures["serving_default"]
  interpreters = {name: tflite_interpreter.make_interpreter(path, os.cpu_count()) for name, path in tflite_files.items()}
  names = ["keras", "saved_model"] + (["keras_513"] if interpreters else []) + list(interpreters)
  reference_of = {"saved_model": "keras", **{name: "keras_513" for name in interpreters}}
  confusions = {name: np.zeros((num_classes, num_classes), np.int64) for name in names}
  agreeing = dict.fromkeys(reference_of, 0)
  scored = 0
  start = last = time.perf_counter()
  count = 0
  for encoded, record in _records(file_pattern, num_images).as_numpy_iterator():
    image, truth = record["image"], record["label"]
    predicted = {"keras": keras_classes(tf.constant(image, tf.float32)).numpy()}
    out = serve(image_bytes=tf.constant([encoded]))
    predicted["saved_model"] = out["masks"].numpy()[0, :out["heights"][0], :out["widths"][0]]
    if interpreters:
      padded, fitted = _fit_and_pad(image, TFLITE_SIZE, input_pipeline.MEAN_PIXEL)
      predicted["keras_513"] = _crop_back(keras_classes(tf.constant(padded)).numpy(), fitted, image.shape[:2])
      for name, interpreter in interpreters.items():
        predicted[name] = tflite_predict(interpreter, image)
    valid = truth != input_pipeline.IGNORE_LABEL
    scored += int(valid.sum())
    for name in names:
      confusions[name] += metrics_lib.count_confusion(truth, predicted[name], num_classes)
    for name, reference in reference_of.items():
      agreeing[name] += int((predicted[name][valid] == predicted[reference][valid]).sum())
    count += 1
    if time.perf_counter() - last > PROGRESS_SECONDS:
      last = time.perf_counter()
      _progress(f"check: {count} images ({count / (last - start):.2f}/s)")
  if count == 0:
    raise ValueError(f"no images to check in {file_pattern}")
  inputs = {"keras": "native size", "saved_model": "native size (encoded bytes)"}
  exports = {}
  for name in names:
    summary = metrics_lib.summarize_confusion(confusions[name])
    exports[name] = {"input": inputs.get(name, f"padded to {TFLITE_SIZE}"), "miou": summary["miou"],
                     "pixel_accuracy": summary["pixel_accuracy"]}
    if name in reference_of:
      exports[name]["agreement_with_" + reference_of[name]] = agreeing[name] / max(scored, 1)
  return {"check_data": file_pattern, "images": count, "scored_pixels": scored, "exports": exports}


def _int8_drop(exports: dict) -> float | None:
  """mIoU points lost by int8 against float (the float32 TFLite, else Keras at the same padded input)."""
  if "tflite_int8" not in exports:
    return None
  float_miou = exports.get("tflite_float32", exports["keras_513"])["miou"]
  return 100 * (float_miou - exports["tflite_int8"]["miou"])


def _print_table(report: dict) -> None:
  print(f"{'export':<16}{'input':<30}{'mIoU':>8}{'pixel acc.':>12}{'agreement':>11}")
  for name, row in report["exports"].items():
    agreement = next((f"{v:.4f}" for k, v in row.items() if k.startswith("agreement_with_")), "-")
    print(f"{name:<16}{row['input']:<30}{row['miou']:>8.4f}{row['pixel_accuracy']:>12.4f}{agreement:>11}")
  print(f"({report['images']} images of {report['check_data']}; agreement: same class as Keras at the same input)")


# ---------------------------------------------------------------------------------------------------------------
# Command
# ---------------------------------------------------------------------------------------------------------------


def _progress(message: str) -> None:
  print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def _step(message: str):
  _progress(message + " ...")
  start = time.perf_counter()
  yield
  _progress(f"{message}: done in {time.perf_counter() - start:.0f} s")


def _write_bytes(path: str, content: bytes) -> None:
  with tf.io.gfile.GFile(path, "wb") as f:
    f.write(content)


def _check_data(config) -> str | None:
  if FLAGS.check_data:
    input_pipeline.list_files(FLAGS.check_data)  # Fails now, not after the exports, when nothing matches.
    return FLAGS.check_data
  if FLAGS.data_dir:
    return train.split_files(FLAGS.data_dir, config.eval_split)
  return None


def run(model_dir: str, output_dir: str) -> dict:
  """Writes the exports (and the check's report); returns the report."""
  if FLAGS.int8:
    try:
      input_pipeline.list_files(FLAGS.calibration_data)
    except ValueError as error:
      raise ValueError(f"--calibration_data: {error}") from None
  config, model, weights = evaluate.load_run(model_dir, FLAGS.weights)
  check_data = _check_data(config)
  tf.io.gfile.makedirs(output_dir)
  split_outputs.write_class_names(output_dir, train.class_names_of(config))

  saved_model_dir = os.path.join(output_dir, SAVED_MODEL_DIR)
  with _step(f"writing {saved_model_dir}"):
    export_saved_model(model, saved_model_dir)
  tflite_files = {}
  if FLAGS.tflite:
    tflite_files["tflite_float32"] = os.path.join(output_dir, FLOAT32_TFLITE)
    with _step(f"writing {tflite_files['tflite_float32']}"):
      _write_bytes(tflite_files["tflite_float32"], convert_tflite(model))
  if FLAGS.int8:
    tflite_files["tflite_int8"] = os.path.join(output_dir, INT8_TFLITE)
    with _step(f"writing {tflite_files['tflite_int8']} (calibrating on up to {FLAGS.num_calibration} images)"):
      representative = calibration_images(FLAGS.calibration_data, FLAGS.num_calibration)
      _write_bytes(tflite_files["tflite_int8"], convert_tflite(model, representative, ranges=FLAGS.int8_ranges))

  report = {"model_dir": model_dir, "weights": weights, "class_names": list(train.class_names_of(config)),
            "saved_model": saved_model_dir,
            "tflite": {name: {"file": path, "bytes": tf.io.gfile.stat(path).length}
                       for name, path in tflite_files.items()}}
  if FLAGS.int8:
    report["calibration"] = {"data": FLAGS.calibration_data, "max_images": FLAGS.num_calibration,
                             "ranges": FLAGS.int8_ranges}
  if check_data:
    with _step(f"checking every export on {'up to ' + str(FLAGS.num_check_images) if FLAGS.num_check_images else 'all'} "
               f"images of {check_data}"):
      report.update(check_exports(model, check_data, FLAGS.num_check_images, saved_model_dir=saved_model_dir,
                                  tflite_files=tflite_files, num_classes=config.model.num_classes))
    report["int8_drop_points"] = _int8_drop(report["exports"])
  with tf.io.gfile.GFile(os.path.join(output_dir, REPORT), "w") as f:
    json.dump(report, f, indent=2)
  return report


def main(argv):
  if len(argv) > 1:
    cli.exit_with(f"unexpected arguments {' '.join(argv[1:])}")
  logging.set_verbosity(logging.WARNING)  # The SavedModel writer's INFO lines, several per export.
  try:
    report = run(FLAGS.model_dir, FLAGS.output_dir)
  except (train.DataError, ValueError) as error:  # DataError is a ValueError; both are the user's to fix.
    cli.exit_with(str(error))
  if "exports" in report:
    _print_table(report)
    drop = report["int8_drop_points"]
    if drop is not None and drop > 1.0:
      _progress(f"warning: int8 loses {drop:.2f} mIoU points against float (more than 1)")
  print(f"wrote {FLAGS.output_dir}: {SAVED_MODEL_DIR}/" +
        "".join(f", {os.path.basename(t['file'])}" for t in report["tflite"].values()) + f", {REPORT}")


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
