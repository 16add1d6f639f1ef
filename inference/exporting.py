"""Exports of a run for serving, and their check (what python -m inference.export runs; its docstring lists the
files): a SavedModel that takes encoded images, TFLite float32 and int8 models of Google's fixed 513x513 input,
and every export scored beside the Keras model on the same images.
"""

from collections.abc import Callable
from collections.abc import Iterator
import json
import os
import sys
import tempfile
from typing import Any

import cv2
import keras
import numpy as np
import tensorflow as tf

from contracts import console
from contracts import schema
from contracts import shards
from contracts import voc
from deeplab import metrics as metrics_lib
from deeplab import pixels
from deeplab import run_folder
from deeplab import tfrecords
from inference import int8_ranges
from inference import tflite_interpreter

SAVED_MODEL_DIR = "saved_model"
FLOAT32_TFLITE = "model_float32.tflite"
INT8_TFLITE = "model_int8.tflite"
REPORT = "export_report.json"


# ---------------------------------------------------------------------------------------------------------------
# SavedModel
# ---------------------------------------------------------------------------------------------------------------


def _serving_fn(model: keras.Model) -> Callable:
  """image_bytes [N] -> {masks, heights, widths}; one model call per image at its own size, since padding would
  change the prediction (the ASPP's image pooling averages over the padding too)."""

  def serve(image_bytes):
    count = tf.shape(image_bytes)[0]

    def predict_one(i, masks, heights, widths):
      image = tfrecords.decode_image(image_bytes[i])  # The training pipeline's decoding, JPEG IDCT included.
      logits = model(tf.cast(image, tf.float32)[tf.newaxis], training=False)[0]
      mask = tf.cast(tf.argmax(logits, axis=-1), tf.uint8)
      return i + 1, masks.write(i, mask), heights.write(i, tf.shape(mask)[0]), widths.write(i, tf.shape(mask)[1])

    masks = tf.TensorArray(tf.uint8, size=count, infer_shape=False, element_shape=tf.TensorShape([None, None]))
    _, masks, heights, widths = tf.while_loop(
      lambda i, *_: i < count,
      predict_one,
      [0, masks, tf.TensorArray(tf.int32, size=count), tf.TensorArray(tf.int32, size=count)],
    )
    heights, widths = heights.stack(), widths.stack()
    max_height = tf.maximum(tf.reduce_max(heights), 0)  # 0, not INT_MIN, for an empty request.
    max_width = tf.maximum(tf.reduce_max(widths), 0)
    padded = tf.map_fn(
      lambda i: tf.pad(
        masks.read(i), [[0, max_height - heights[i]], [0, max_width - widths[i]]], constant_values=voc.IGNORE_LABEL
      ),
      tf.range(count),
      fn_output_signature=tf.TensorSpec([None, None], tf.uint8),
    )
    return {"masks": padded, "heights": heights, "widths": widths}

  return serve


def export_saved_model(model: keras.Model, export_dir: str) -> None:
  """A SavedModel whose `serving_default` maps encoded images to padded class-id masks (module docstring)."""
  archive = keras.export.ExportArchive()
  archive.track(model)
  archive.add_endpoint(
    "serving_default", _serving_fn(model), input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")]
  )
  archive.write_out(export_dir, verbose=False)


# ---------------------------------------------------------------------------------------------------------------
# TFLite
# ---------------------------------------------------------------------------------------------------------------


def convert_tflite(
  model: keras.Model,
  representative_images: Callable[[], Iterator[np.ndarray]] | None = None,
  size: int = pixels.DEEPLAB_CANVAS,
  ranges: str = "mean",
) -> bytes:
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
    converter._experimental_calibrate_only = True  # Private: no public API gives this.
    calibrated = converter.convert()
  if ranges == "mean":
    calibrated_for_quantizer = int8_ranges.with_ranges(
      calibrated, int8_ranges.mean_of_per_image_ranges(calibrated, representative_images)
    )
  else:
    calibrated_for_quantizer = calibrated
  quantized = int8_ranges.quantize(calibrated_for_quantizer, input_type=tf.uint8)
  quantized, kept, total = int8_ranges.keep_weight_grids(quantized, calibrated)
  if kept:
    print(
      f"int8: {kept} of {total} convolution channels keep the quantization grid of their imported weights",
      file=sys.stderr,
      flush=True,
    )
  return quantized


def _records(file_pattern: str, count: int) -> tf.data.Dataset:
  """(encoded image, decoded record) of the first `count` records (0: all), in file order."""
  dataset = tf.data.TFRecordDataset(tfrecords.list_files(file_pattern))
  if count:
    dataset = dataset.take(count)
  return dataset.map(
    lambda serialized: (schema.parse_example(serialized)[schema.IMAGE_ENCODED], tfrecords.decode_record(serialized)),
    num_parallel_calls=tf.data.AUTOTUNE,
    deterministic=True,
  ).prefetch(tf.data.AUTOTUNE)


def _fit_and_pad(image: np.ndarray, size: int, pad_value: float) -> tuple[np.ndarray, tuple[int, int]]:
  """image [h, w, 3] -> float32 [size, size, 3] (scaled down to fit if larger, padded bottom/right) and the
  size of the picture inside it."""
  height, width = image.shape[:2]
  scale = min(1.0, size / max(height, width))
  if scale < 1.0:
    fitted = (max(1, round(height * scale)), max(1, round(width * scale)))
    image = cv2.resize(image, fitted[::-1], interpolation=cv2.INTER_AREA)
  padded = np.full((size, size, 3), pad_value, np.float32)
  padded[: image.shape[0], : image.shape[1]] = image
  return padded, image.shape[:2]


def calibration_images(
  file_pattern: str, count: int, size: int = pixels.DEEPLAB_CANVAS
) -> Callable[[], Iterator[np.ndarray]]:
  """The converter's representative dataset: images prepared exactly as `tflite_predict` prepares them."""

  def images():
    progress = console.Progress("calibration", count, unit="images")
    for _, record in _records(file_pattern, count).as_numpy_iterator():
      yield _fit_and_pad(record["image"], size, pixels.MEAN_PIXEL)[0][np.newaxis]
      progress.add()
    progress.close()

  return images


def tflite_predict(interpreter, image: np.ndarray) -> np.ndarray:
  """Class ids [h, w] of one uint8 RGB image [h, w, 3] from one of our TFLite exports (real input: raw pixels)."""
  [input_details] = interpreter.get_input_details()
  size = int(input_details["shape"][1])
  padded, (height, width) = _fit_and_pad(image, size, pixels.MEAN_PIXEL)
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
  classes = classes[: fitted[0], : fitted[1]].astype(np.uint8)
  if classes.shape != tuple(shape):
    classes = cv2.resize(classes, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
  return classes


# ---------------------------------------------------------------------------------------------------------------
# The check: every export beside the Keras model on the same images
# ---------------------------------------------------------------------------------------------------------------


def check_exports(
  model: keras.Model,
  file_pattern: str,
  num_images: int,
  *,
  saved_model_dir: str,
  tflite_files: dict[str, str],
  num_classes: int,
) -> dict:
  """mIoU, pixel accuracy and agreement with the Keras model (fraction of scored pixels with the same class, at
  the same input) of every export, on the same images. Keras runs twice: at each image's own size (what the
  SavedModel does) and padded to the TFLite input (what the TFLite models see), so that the TFLite rows measure
  conversion and quantization, not padding."""

  @tf.function(reduce_retracing=True)
  def keras_classes(image):
    return tf.cast(tf.argmax(model(image[tf.newaxis], training=False)[0], axis=-1), tf.uint8)

  serve = tf.saved_model.load(saved_model_dir).signatures["serving_default"]
  interpreters = {
    name: tflite_interpreter.make_interpreter(path, os.cpu_count()) for name, path in tflite_files.items()
  }
  names = ["keras", "saved_model"] + (["keras_513"] if interpreters else []) + list(interpreters)
  reference_of = {"saved_model": "keras", **{name: "keras_513" for name in interpreters}}
  confusions = {name: np.zeros((num_classes, num_classes), np.int64) for name in names}
  agreeing = dict.fromkeys(reference_of, 0)
  scored = 0
  count = 0
  progress = console.Progress("check", num_images or None, unit="images")
  for encoded, record in _records(file_pattern, num_images).as_numpy_iterator():
    image, truth = record["image"], record["label"]
    predicted = {"keras": keras_classes(tf.constant(image, tf.float32)).numpy()}
    out = serve(image_bytes=tf.constant([encoded]))
    predicted["saved_model"] = out["masks"].numpy()[0, : out["heights"][0], : out["widths"][0]]
    if interpreters:
      padded, fitted = _fit_and_pad(image, pixels.DEEPLAB_CANVAS, pixels.MEAN_PIXEL)
      predicted["keras_513"] = _crop_back(keras_classes(tf.constant(padded)).numpy(), fitted, image.shape[:2])
      for name, interpreter in interpreters.items():
        predicted[name] = tflite_predict(interpreter, image)
    valid = truth != voc.IGNORE_LABEL
    scored += int(valid.sum())
    for name in names:
      confusions[name] += metrics_lib.count_confusion(truth, predicted[name], num_classes)
    for name, reference in reference_of.items():
      agreeing[name] += int((predicted[name][valid] == predicted[reference][valid]).sum())
    count += 1
    progress.add()
  progress.close()
  if count == 0:
    raise ValueError(f"no images to check in {file_pattern}")
  inputs = {"keras": "native size", "saved_model": "native size (encoded bytes)"}
  exports = {}
  for name in names:
    summary = metrics_lib.summarize_confusion(confusions[name])
    exports[name] = {
      "input": inputs.get(name, f"padded to {pixels.DEEPLAB_CANVAS}"),
      "miou": summary["miou"],
      "pixel_accuracy": summary["pixel_accuracy"],
    }
    if name in reference_of:
      exports[name]["agreement_with_" + reference_of[name]] = agreeing[name] / max(scored, 1)
  return {"check_data": file_pattern, "images": count, "scored_pixels": scored, "exports": exports}


def int8_drop(exports: dict) -> float | None:
  """mIoU points lost by int8 against float (the float32 TFLite, else Keras at the same padded input)."""
  if "tflite_int8" not in exports:
    return None
  float_miou = exports.get("tflite_float32", exports["keras_513"])["miou"]
  return 100 * (float_miou - exports["tflite_int8"]["miou"])


def check_table(report: dict) -> str:
  """The check's report as the table python -m inference.export prints."""
  lines = [f"{'export':<16}{'input':<30}{'mIoU':>8}{'pixel acc.':>12}{'agreement':>11}"]
  for name, row in report["exports"].items():
    agreement = next((f"{v:.4f}" for k, v in row.items() if k.startswith("agreement_with_")), "-")
    lines.append(f"{name:<16}{row['input']:<30}{row['miou']:>8.4f}{row['pixel_accuracy']:>12.4f}{agreement:>11}")
  lines.append(
    f"({report['images']} images of {report['check_data']}; agreement: same class as Keras at the same input)"
  )
  return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# A run's exports
# ---------------------------------------------------------------------------------------------------------------


def _write_bytes(path: str, content: bytes) -> None:
  with tf.io.gfile.GFile(path, "wb") as f:
    f.write(content)


def export_run(
  model_dir: str,
  output_dir: str,
  *,
  weights: str | None = None,
  tflite: bool = False,
  int8: bool = False,
  calibration_data: str | None = None,
  num_calibration: int = 200,
  ranges: str = "mean",
  check_data: str | None = None,
  data_dir: str | None = None,
  num_check_images: int = 100,
) -> dict:
  """Writes a run's exports into output_dir (and, with check_data or data_dir's eval split, the check's report);
  returns the report."""
  if int8:
    if calibration_data is None:
      raise ValueError("--calibration_data: int8 needs TFRecord glob(s) of images to calibrate on")
    try:
      tfrecords.list_files(calibration_data)
    except ValueError as error:
      raise ValueError(f"--calibration_data: {error}") from None
  config, model, found = run_folder.load_run(model_dir, weights)
  if check_data:
    tfrecords.list_files(check_data)  # Fails now, not after the exports, when nothing matches.
  elif data_dir:
    check_data = shards.split_files(data_dir, config.eval_split)
  tf.io.gfile.makedirs(output_dir)
  shards.write_class_names(output_dir, run_folder.class_names_of(config))
  if run_folder.class_colours_of(config):
    shards.write_class_colours(output_dir, run_folder.class_colours_of(config))

  saved_model_dir = os.path.join(output_dir, SAVED_MODEL_DIR)
  with console.step(f"writing {saved_model_dir}"):
    export_saved_model(model, saved_model_dir)
  tflite_files = {}
  if tflite:
    tflite_files["tflite_float32"] = os.path.join(output_dir, FLOAT32_TFLITE)
    with console.step(f"writing {tflite_files['tflite_float32']}"):
      _write_bytes(tflite_files["tflite_float32"], convert_tflite(model))
  if int8:
    assert calibration_data is not None  # Checked at the start.
    tflite_files["tflite_int8"] = os.path.join(output_dir, INT8_TFLITE)
    with console.step(f"writing {tflite_files['tflite_int8']} (calibrating on up to {num_calibration} images)"):
      representative = calibration_images(calibration_data, num_calibration)
      _write_bytes(tflite_files["tflite_int8"], convert_tflite(model, representative, ranges=ranges))

  report: dict[str, Any] = {
    "model_dir": model_dir,
    "weights": found,
    "class_names": list(run_folder.class_names_of(config)),
    "saved_model": saved_model_dir,
    "tflite": {name: {"file": path, "bytes": tf.io.gfile.stat(path).length} for name, path in tflite_files.items()},
  }
  if int8:
    report["calibration"] = {"data": calibration_data, "max_images": num_calibration, "ranges": ranges}
  if check_data:
    with console.step(
      f"checking every export on {'up to ' + str(num_check_images) if num_check_images else 'all'} "
      f"images of {check_data}"
    ):
      report.update(
        check_exports(
          model,
          check_data,
          num_check_images,
          saved_model_dir=saved_model_dir,
          tflite_files=tflite_files,
          num_classes=config.model.num_classes,
        )
      )
    report["int8_drop_points"] = int8_drop(report["exports"])
  with tf.io.gfile.GFile(os.path.join(output_dir, REPORT), "w") as f:
    json.dump(report, f, indent=2)
  return report
