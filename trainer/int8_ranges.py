"""Activation ranges for int8 TFLite: the mean of each image's min and max, as quantization-aware training learns.

TFLite's calibrator takes each tensor's range as the min and max over all calibration images: one unusual image
widens a range for every other, and the more images, the wider (coarser) every step. Quantization-aware
training, which Google's published int8 models had, tracks a moving average of each batch's min and max
instead. Here the converter calibrates (`_experimental_calibrate_only`), the float model it returns runs once
per image to record each tensor's min and max, their means replace the calibrator's ranges, and TFLite's own
quantizer (`mlir_quantize`, what the converter calls next) turns the model into int8.
"""

from collections.abc import Callable, Iterator

import numpy as np
import tensorflow as tf
from tensorflow.lite.python import convert as tflite_convert
from tensorflow.lite.tools import flatbuffer_utils

METHODS = ("mean", "minmax")  # minmax: the calibrator's own ranges.


def _ranged_tensors(model) -> list[int]:
  """Indices (in subgraph 0) of the tensors the calibrator gave a single (per-tensor) range, but the model's
  inputs: their range is what callers feed (raw pixels 0..255), not a statistic to tighten."""
  subgraph = model.subgraphs[0]
  inputs = set(np.asarray(subgraph.inputs).tolist())
  return [i for i, tensor in enumerate(subgraph.tensors)
          if i not in inputs and tensor.quantization is not None and tensor.quantization.min is not None
          and len(tensor.quantization.min) == 1]


def mean_of_per_image_ranges(calibrated: bytes, images: Callable[[], Iterator[np.ndarray]]
                             ) -> dict[int, tuple[float, float]]:
  """{tensor index: (mean of per-image minima, mean of per-image maxima)} of the calibrated float model."""
  indices = _ranged_tensors(flatbuffer_utils.convert_bytearray_to_object(calibrated))
  interpreter = tf.lite.Interpreter(model_content=calibrated, experimental_preserve_all_tensors=True)
  interpreter.allocate_tensors()
  [input_details] = interpreter.get_input_details()
  minima, maxima = {i: [] for i in indices}, {i: [] for i in indices}
  for image in images():
    interpreter.set_tensor(input_details["index"], image.astype(np.float32))
    interpreter.invoke()
    for i in indices:
      values = interpreter.get_tensor(i)
      if values.dtype == np.float32 and values.size:
        minima[i].append(float(values.min()))
        maxima[i].append(float(values.max()))
  return {i: (float(np.mean(minima[i])), float(np.mean(maxima[i]))) for i in indices if minima[i]}


def with_ranges(calibrated: bytes, ranges: dict[int, tuple[float, float]]) -> bytes:
  """The calibrated model with these (min, max) ranges, widened to hold 0 (as the quantizer needs)."""
  model = flatbuffer_utils.convert_bytearray_to_object(calibrated)
  tensors = model.subgraphs[0].tensors
  for i, (low, high) in ranges.items():
    tensors[i].quantization.min = np.array([min(low, 0.0)], np.float32)
    tensors[i].quantization.max = np.array([max(high, 0.0)], np.float32)
  return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def quantize(calibrated: bytes, *, input_type: tf.dtypes.DType) -> bytes:
  """Full-integer int8 (per-channel weights) from a calibrated model, as TFLiteConverter.convert() finishes."""
  return tflite_convert.mlir_quantize(calibrated, disable_per_channel=False, input_data_type=input_type,
                                      output_data_type=tf.float32)
