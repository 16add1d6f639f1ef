"""inference.export: the SavedModel's serving signature, the TFLite float32/int8 models and the command's check.

One tiny run (alpha 0.35, lean head, random init) is exported by the command on a few VOC-layout pairs
(calibration: 3 training images; check: 2 val images); the tests inspect what it wrote. Once on generated pairs
(conftest's voc_data), so that a clone without ../shared covers the export, and once more on real VOC pairs where
../shared is.
"""

import io
import json
import subprocess
import sys

import keras
import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from configs import smoke
from contracts import run_dir
from contracts import voc
from deeplab import building
from deeplab import pixels
from deeplab import run_folder
from deeplab import tfrecords
from inference import exporting
from inference import int8_ranges
from inference import tflite_interpreter
from preprocessing import pairs
from tests.conftest import REPO_ROOT
from tests.conftest import clear_pixels

TRAIN_IDS = 3
VAL_IDS = 2


def _split_ids(voc_root, split: str, count: int) -> list[str]:
  return (voc_root / voc.SPLIT_DIR / f"{split}.txt").read_text().split()[:count]


@pytest.fixture(scope="module")
def records(voc_data, tmp_path_factory):
  """A few VOC pairs as {split}-*.tfrecord shards, converted as the Beam job converts them."""
  output = tmp_path_factory.mktemp("records")
  for split, count in (("train", TRAIN_IDS), ("val", VAL_IDS)):
    with tf.io.TFRecordWriter(str(output / f"{split}-00000-of-00001.tfrecord")) as writer:
      for image_id in _split_ids(voc_data, split, count):
        writer.write(pairs.convert_or_raise(str(voc_data), image_id))
  return output


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  """A run folder as training leaves it (config.json, final weights), without the training."""
  model_dir = tmp_path_factory.mktemp("run")
  config = smoke.get_config()
  keras.utils.set_random_seed(0)
  model = building.create_model(config)
  (model_dir / "checkpoints").mkdir()
  model.save_weights(str(model_dir / run_dir.FINAL_WEIGHTS))
  (model_dir / "config.json").write_text(config.to_json_best_effort(indent=2))
  return model_dir


@pytest.fixture(scope="module")
def exported(tiny_run, records, tmp_path_factory):
  output_dir = tmp_path_factory.mktemp("export")
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "inference.export",
      f"--model_dir={tiny_run}",
      f"--output_dir={output_dir}",
      "--tflite",
      "--int8",
      f"--calibration_data={records}/train-*.tfrecord",
      f"--num_calibration={TRAIN_IDS}",
      f"--data_dir={records}",
      "--num_check_images=0",
    ],
    cwd=REPO_ROOT,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  return output_dir, result


@pytest.fixture(scope="module")
def keras_model(tiny_run):
  return run_folder.load_run(str(tiny_run))[1]


def _keras_logits(model, image: np.ndarray) -> np.ndarray:
  return model.predict(image[np.newaxis].astype(np.float32), verbose=0)[0]


# The exports compute the Keras model's logits with other kernels (the SavedModel's graph, TFLite's converted and
# batch-norm-folded graph): their classes are the Keras model's wherever rounding cannot decide
# (conftest.clear_pixels), and the comparisons below hold on those pixels, which must be nearly all of them
# (0.03-0.05% tie within rounding on this untrained model's logits): 0.99 leaves room for other photos.
MIN_CLEAR = 0.99


def test_saved_model_answers_a_jpeg_and_a_png_of_other_sizes_with_the_keras_masks(exported, keras_model, voc_data):
  output_dir, _ = exported
  jpeg_path = voc_data / voc.IMAGE_DIR / f"{_split_ids(voc_data, 'val', 1)[0]}.jpg"
  jpeg = jpeg_path.read_bytes()
  jpeg_image = np.asarray(Image.open(jpeg_path).convert("RGB"))  # libjpeg ISLOW, as the pipeline decodes
  train_image = np.asarray(
    Image.open(voc_data / voc.IMAGE_DIR / f"{_split_ids(voc_data, 'train', 1)[0]}.jpg").convert("RGB")
  )
  # A crop (201x157 of a photo, 10 pixels short of a generated picture), so that it differs from the JPEG in size.
  png_image = train_image[: min(201, train_image.shape[0] - 10), : min(157, train_image.shape[1] - 10)]
  assert png_image.shape != jpeg_image.shape
  buffer = io.BytesIO()
  Image.fromarray(png_image).save(buffer, format="PNG")

  serve = tf.saved_model.load(str(output_dir / exporting.SAVED_MODEL_DIR)).signatures["serving_default"]
  out = serve(image_bytes=tf.constant([jpeg, buffer.getvalue()]))
  masks, heights, widths = out["masks"].numpy(), out["heights"].numpy(), out["widths"].numpy()

  assert masks.dtype == np.uint8 and heights.dtype == np.int32 and widths.dtype == np.int32
  assert list(heights) == [jpeg_image.shape[0], png_image.shape[0]]
  assert list(widths) == [jpeg_image.shape[1], png_image.shape[1]]
  assert masks.shape == (2, max(heights), max(widths))
  for mask, image, height, width in zip(masks, (jpeg_image, png_image), heights, widths, strict=True):
    logits = _keras_logits(keras_model, image)
    expected, clear = np.argmax(logits, axis=-1), clear_pixels(logits)
    assert clear.mean() > MIN_CLEAR
    assert len(np.unique(expected[clear])) > 1  # A mask that could tell a wrong model from a right one.
    np.testing.assert_array_equal(mask[:height, :width][clear], expected[clear])
    assert (mask[height:] == 255).all() and (mask[:, width:] == 255).all()


def _all_tensor_dtypes(interpreter) -> set:
  return {np.dtype(t["dtype"]) for t in interpreter.get_tensor_details()}


@pytest.mark.parametrize(
  "name, input_dtype", [(exporting.FLOAT32_TFLITE, np.float32), (exporting.INT8_TFLITE, np.uint8)]
)
def test_tflite_models_run_in_the_interpreter_on_a_513_input_and_give_class_ids(
  exported, keras_model, voc_data, name, input_dtype
):
  output_dir, _ = exported
  interpreter = tflite_interpreter.make_interpreter(str(output_dir / name), num_threads=2)
  [input_details], [output_details] = interpreter.get_input_details(), interpreter.get_output_details()
  assert list(input_details["shape"]) == [1, 513, 513, 3] and input_details["dtype"] == input_dtype
  assert list(output_details["shape"]) == [1, 513, 513] and output_details["dtype"] == np.uint8

  image = np.asarray(Image.open(voc_data / voc.IMAGE_DIR / f"{_split_ids(voc_data, 'val', 1)[0]}.jpg").convert("RGB"))
  classes = exporting.tflite_predict(interpreter, image)
  assert classes.shape == image.shape[:2] and classes.max() < 21
  padded = np.full((513, 513, 3), pixels.MEAN_PIXEL, np.float32)
  padded[: image.shape[0], : image.shape[1]] = image
  logits = _keras_logits(keras_model, padded)[: image.shape[0], : image.shape[1]]
  if input_dtype == np.float32:
    # The conversion changes nothing but float rounding: the same class wherever rounding cannot decide.
    clear = clear_pixels(logits)
    assert clear.mean() > MIN_CLEAR
    np.testing.assert_array_equal(classes[clear], np.argmax(logits, axis=-1)[clear])
  else:
    scale, zero_point = input_details["quantization"]
    assert scale > 0 and 0 <= zero_point <= 255
    assert np.dtype(np.float32) not in _all_tensor_dtypes(interpreter)  # Full-integer: no float tensor inside.
    assert np.dtype(np.int8) in _all_tensor_dtypes(interpreter)


def _tied_pixels(model, records) -> tuple[int, int, int]:
  """(scored pixels, of them those whose top two logits tie within rounding at the image's own size, and on the
  513 canvas the TFLite models see) over the check's images: the val records, as the command reads them."""
  scored = tied_native = tied_canvas = 0
  for image, label in tfrecords.eval_dataset(f"{records}/val-*.tfrecord", batch_size=1):
    image, valid = image[0].numpy().astype(np.uint8), label[0].numpy() != voc.IGNORE_LABEL
    canvas, (height, width) = exporting._fit_and_pad(  # The exporter's own padding, tested directly.
      image, pixels.DEEPLAB_CANVAS, pixels.MEAN_PIXEL
    )
    scored += int(valid.sum())
    tied_native += int((valid & ~clear_pixels(_keras_logits(model, image))).sum())
    tied_canvas += int((valid & ~clear_pixels(_keras_logits(model, canvas)[:height, :width])).sum())
  return scored, tied_native, tied_canvas


def test_command_checks_every_export_on_the_same_images_and_writes_the_report(exported, keras_model, records):
  output_dir, result = exported
  report = json.loads((output_dir / exporting.REPORT).read_text())
  assert report["images"] == VAL_IDS and report["scored_pixels"] > 0
  exports = report["exports"]
  assert list(exports) == ["keras", "saved_model", "keras_513", "tflite_float32", "tflite_int8"]
  for row in exports.values():
    assert 0.0 <= row["miou"] <= 1.0 and 0.0 <= row["pixel_accuracy"] <= 1.0
  # The SavedModel and the float32 TFLite model may differ from Keras only where rounding decides the class.
  scored, tied_native, tied_canvas = _tied_pixels(keras_model, records)
  assert scored == report["scored_pixels"]
  assert exports["saved_model"]["agreement_with_keras"] >= 1.0 - tied_native / scored, (tied_native, scored)
  if exports["saved_model"]["agreement_with_keras"] == 1.0:
    assert exports["saved_model"]["miou"] == exports["keras"]["miou"]  # The same classes: the same score.
  assert exports["tflite_float32"]["agreement_with_keras_513"] >= 1.0 - tied_canvas / scored, (tied_canvas, scored)
  assert report["int8_drop_points"] == pytest.approx(
    100 * (exports["tflite_float32"]["miou"] - exports["tflite_int8"]["miou"])
  )
  assert report["tflite"]["tflite_int8"]["bytes"] > 0
  for name in exports:
    assert name in result.stdout
  assert "calibration:" in result.stderr or "calibrating" in result.stderr


@pytest.mark.parametrize(
  "arguments, message",
  [
    (["--model_dir={tmp}"], "has no config.json"),
    (["--model_dir={run}", "--int8"], "--int8 needs --calibration_data"),
    (["--model_dir={run}", "--int8", "--calibration_data={tmp}/train-*.tfrecord"], "--calibration_data: no file"),
  ],
)
def test_mistakes_are_one_line_errors(tiny_run, tmp_path, arguments, message):
  arguments = [a.format(tmp=tmp_path, run=tiny_run) for a in arguments]
  result = subprocess.run(
    [sys.executable, "-m", "inference.export", f"--output_dir={tmp_path}/out", *arguments],
    cwd=REPO_ROOT,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert result.returncode == 2, result.stderr[-2000:]
  assert message in result.stderr.strip().splitlines()[-1]


def _calibrated(graph, images) -> bytes:
  """TFLite's calibrated float model of a tf.function on these images (what int8_ranges starts from)."""
  converter = tf.lite.TFLiteConverter.from_concrete_functions([graph.get_concrete_function()], graph)
  converter.optimizations = [tf.lite.Optimize.DEFAULT]
  converter.representative_dataset = lambda: ([image] for image in images)
  converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
  converter._experimental_calibrate_only = True  # Private: no public API gives this.
  return converter.convert()


def test_int8_activation_ranges_are_the_mean_of_each_images_min_and_max():
  """What inference.int8_ranges puts in place of TFLite's min/max over all calibration images, checked by hand on
  a graph whose tensors are known: y = relu(conv(x)) with a fixed filter; one image far brighter than the rest
  widens TFLite's ranges but moves the means by a fraction."""
  kernel = tf.constant(np.full((1, 1, 3, 2), 0.5, np.float32))

  @tf.function(input_signature=[tf.TensorSpec([1, 8, 8, 3], tf.float32)])
  def graph(x):
    return tf.nn.relu(tf.nn.conv2d(x, kernel, 1, "VALID") - 20.0)

  rng = np.random.default_rng(0)
  images = [rng.uniform(0, 40, (1, 8, 8, 3)).astype(np.float32) for _ in range(4)]
  images.append(np.full((1, 8, 8, 3), 200.0, np.float32))  # The outlier.
  calibrated = _calibrated(graph, images)

  ranges = int8_ranges.mean_of_per_image_ranges(calibrated, lambda: iter(images))
  outputs = [np.maximum(image.sum(-1, keepdims=True) * 0.5 - 20.0, 0.0) for image in images]
  interpreter = tf.lite.Interpreter(model_content=calibrated)
  [output_index] = [d["index"] for d in interpreter.get_output_details()]
  [input_index] = [d["index"] for d in interpreter.get_input_details()]
  assert input_index not in ranges  # The input keeps the range callers feed.
  low, high = ranges[output_index]
  # TFLite's calibrator runs the float graph in float32 on outputs <= 280 (~3e-5 rounding), the reference in float64.
  assert low == pytest.approx(np.mean([o.min() for o in outputs]), abs=1e-3)
  assert high == pytest.approx(np.mean([o.max() for o in outputs]), abs=1e-3)  # TFLite's own: 280.

  quantized = int8_ranges.quantize(int8_ranges.with_ranges(calibrated, ranges), input_type=tf.uint8)
  interpreter = tf.lite.Interpreter(model_content=quantized)
  scale, zero_point = interpreter.get_input_details()[0]["quantization"]
  assert scale == pytest.approx(200 / 255, rel=1e-3) and zero_point == 0  # The calibrator's input range.


def _first_convolution_weights(model_bytes: bytes) -> tuple[np.ndarray, np.ndarray]:
  """(int8 weights, per-channel scales) of the first CONV_2D of a quantized model."""
  from tensorflow.lite.python import schema_py_generated as schema_fb
  from tensorflow.lite.tools import flatbuffer_utils

  model = flatbuffer_utils.convert_bytearray_to_object(model_bytes)
  subgraph = model.subgraphs[0]
  op = next(
    op
    for op in subgraph.operators
    if max(model.operatorCodes[op.opcodeIndex].builtinCode, model.operatorCodes[op.opcodeIndex].deprecatedBuiltinCode)
    == schema_fb.BuiltinOperator.CONV_2D
  )
  weight = subgraph.tensors[op.inputs[1]]
  ints = np.frombuffer(bytes(bytearray(model.buffers[weight.buffer].data)), np.int8).reshape(weight.shape)
  return ints, np.asarray(weight.quantization.scale)


def test_int8_keeps_the_quantization_grid_of_imported_weights():
  """Weights that are integer multiples of one step (as an import of an int8 file gives) stay exactly that in
  the int8 model, where TFLite alone re-rounds them onto a grid of its own; the outputs follow the float graph
  closer; a channel whose multiples exceed int8 keeps TFLite's grid."""
  step = 0.0137
  rng = np.random.default_rng(0)
  multiples = rng.integers(-30, 31, (3, 3, 3, 4)).astype(np.float32)  # Neighbouring multiples occur.
  multiples[..., 3] *= 4  # Channel 3 reaches 120-odd: it fits, but not with 140.
  multiples[0, 0, 0, 3] = 140  # Channel 3 does not fit int8 on this grid.
  kernel = tf.constant(multiples * step)
  bias = tf.constant([0.5, -0.25, 0.1, 0.0])

  @tf.function(input_signature=[tf.TensorSpec([1, 8, 8, 3], tf.float32)])
  def graph(x):
    return tf.nn.conv2d(x, kernel, 1, "VALID") + bias

  images = [rng.uniform(0, 255, (1, 8, 8, 3)).astype(np.float32) for _ in range(8)]
  calibrated = _calibrated(graph, images)
  tflite_own = int8_ranges.quantize(calibrated, input_type=tf.uint8)
  kept_model, kept, total = int8_ranges.keep_weight_grids(tflite_own, calibrated)
  assert (kept, total) == (3, 4)

  ints, scales = _first_convolution_weights(kept_model)
  ints = np.moveaxis(ints, 0, -1)  # TFLite's [out, h, w, in] -> TF's [h, w, in, out].
  np.testing.assert_allclose(scales[:3], step, rtol=1e-5)
  np.testing.assert_array_equal(ints[..., :3], multiples[..., :3])  # Exactly the imported grid.
  own_ints, own_scales = _first_convolution_weights(tflite_own)
  assert not np.array_equal(np.moveaxis(own_ints, 0, -1)[..., :3], multiples[..., :3])  # TFLite's own re-rounds.
  np.testing.assert_array_equal(ints[..., 3], np.moveaxis(own_ints, 0, -1)[..., 3])  # The channel that did not fit.
  assert scales[3] == own_scales[3]

  def outputs(content):
    interpreter = tf.lite.Interpreter(model_content=content)
    interpreter.allocate_tensors()
    results = []
    for image in images:
      interpreter.set_tensor(interpreter.get_input_details()[0]["index"], np.round(image).astype(np.uint8))
      interpreter.invoke()
      results.append(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]))
    return np.concatenate(results)

  exact = np.concatenate([graph(tf.constant(np.round(image))).numpy() for image in images])
  kept_error = np.abs(outputs(kept_model)[..., :3] - exact[..., :3]).mean()
  own_error = np.abs(outputs(tflite_own)[..., :3] - exact[..., :3]).mean()
  # Both int8 models run integer arithmetic (the same on every CPU) against float32 on integer inputs (~1e-5 rounding):
  # 2.30 against 2.40 measured, a gap made by the grids, not by rounding.
  assert kept_error < own_error
  assert int8_ranges.grid_step(np.float32(rng.normal(size=(3, 3, 8, 8)))) is None  # Trained weights: no grid.
