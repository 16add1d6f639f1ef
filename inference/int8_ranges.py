"""int8 TFLite as a quantization-aware model would be: activation ranges as QAT tracks them, weight grids kept.

Activation ranges: the mean of each image's min and max. TFLite's calibrator takes each tensor's range as the min
and max over all calibration images: one unusual image widens a range for every other, and the more images, the
wider (coarser) every step. Quantization-aware training, which Google's published int8 models had, tracks a moving
average of each batch's min and max instead. Here the converter calibrates (`_experimental_calibrate_only`), the
float model it returns runs once per image to record each tensor's min and max, their means replace the
calibrator's ranges, and TFLite's own quantizer (`mlir_quantize`, what the converter calls next) makes it int8.

Weight grids: weights imported from an int8 file (inference.import_model) are integer multiples of that file's
scale, the grid quantization-aware training fitted them to. TFLite re-quantizes each channel on a grid of its
own (max |w| / 127), which moves every weight by up to half a step: noise the model never trained with. Where
a convolution's weights lie on one grid and a channel's multiples fit int8, `keep_weight_grids` writes them
on that grid exactly (and its bias at the matching scale); other weights are left as TFLite made them.
"""

from collections.abc import Callable
from collections.abc import Iterator

import numpy as np
import tensorflow as tf
from tensorflow.lite.python import convert as tflite_convert
from tensorflow.lite.python import schema_py_generated as schema_fb
from tensorflow.lite.tools import flatbuffer_utils

METHODS = ("mean", "minmax")  # minmax: the calibrator's own ranges.
CONVOLUTIONS = (schema_fb.BuiltinOperator.CONV_2D, schema_fb.BuiltinOperator.DEPTHWISE_CONV_2D)
GRID_TOLERANCE = 5e-3  # Of a step: float32 rounding of imported (dequantized, BN-folded) weights.


def _ranged_tensors(model) -> list[int]:
  """Indices (in subgraph 0) of the tensors the calibrator gave a single (per-tensor) range, but the model's
  inputs: their range is what callers feed (raw pixels 0..255), not a statistic to tighten."""
  subgraph = model.subgraphs[0]
  inputs = set(np.asarray(subgraph.inputs).tolist())
  return [
    i
    for i, tensor in enumerate(subgraph.tensors)
    if i not in inputs
    and tensor.quantization is not None
    and tensor.quantization.min is not None
    and len(tensor.quantization.min) == 1
  ]


def mean_of_per_image_ranges(
  calibrated: bytes, images: Callable[[], Iterator[np.ndarray]]
) -> dict[int, tuple[float, float]]:
  """{tensor index: (mean of per-image minima, mean of per-image maxima)} of the calibrated float model."""
  indices = _ranged_tensors(flatbuffer_utils.convert_bytearray_to_object(calibrated))
  interpreter = tf.lite.Interpreter(model_content=calibrated, experimental_preserve_all_tensors=True)
  interpreter.allocate_tensors()
  [input_details] = interpreter.get_input_details()
  minima: dict[int, list[float]] = {i: [] for i in indices}
  maxima: dict[int, list[float]] = {i: [] for i in indices}
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
  return tflite_convert.mlir_quantize(
    calibrated, disable_per_channel=False, input_data_type=input_type, output_data_type=tf.float32
  )


def _buffer(model, tensor, dtype) -> np.ndarray:
  return np.frombuffer(bytes(bytearray(model.buffers[tensor.buffer].data)), dtype)


def grid_step(weights: np.ndarray) -> float | None:
  """The step s of which every weight is an integer multiple (within GRID_TOLERANCE), else None."""
  distinct = np.unique(weights.astype(np.float64))
  gaps = np.diff(distinct)
  gaps = gaps[gaps > 1e-12]
  if not gaps.size:
    return None
  step = float(gaps.min())
  multiples = weights / step
  return step if np.abs(multiples - np.round(multiples)).max() <= GRID_TOLERANCE else None


def keep_weight_grids(quantized: bytes, calibrated: bytes) -> tuple[bytes, int, int]:
  """(model, channels kept on their grid, channels of convolutions) for the int8 `quantized` made from the float
  `calibrated` (whose weights are the float values, matched by tensor name)."""
  source = flatbuffer_utils.convert_bytearray_to_object(calibrated)
  float_weights = {
    tensor.name: tensor
    for tensor in source.subgraphs[0].tensors
    if tensor.type == schema_fb.TensorType.FLOAT32 and source.buffers[tensor.buffer].data is not None
  }
  model = flatbuffer_utils.convert_bytearray_to_object(quantized)
  subgraph = model.subgraphs[0]
  kept = total = 0
  for op in subgraph.operators:
    code = model.operatorCodes[op.opcodeIndex]
    if max(code.builtinCode, code.deprecatedBuiltinCode) not in CONVOLUTIONS:
      continue
    weight = subgraph.tensors[op.inputs[1]]
    if weight.type != schema_fb.TensorType.INT8:
      continue
    scales = np.asarray(weight.quantization.scale, np.float64)
    total += len(scales)
    source_tensor = float_weights.get(weight.name)
    if source_tensor is None:
      continue
    values = _buffer(source, source_tensor, np.float32).reshape(weight.shape)
    step = grid_step(values)
    if step is None:
      continue
    axis = weight.quantization.quantizedDimension
    on_grid = np.round(values / step)
    fits = np.abs(np.moveaxis(on_grid, axis, 0).reshape(len(scales), -1)).max(axis=1) <= 127
    channel_shape = [1] * values.ndim
    channel_shape[axis] = len(scales)
    ints = np.where(fits.reshape(channel_shape), on_grid, _buffer(model, weight, np.int8).reshape(weight.shape))
    model.buffers[weight.buffer].data = np.frombuffer(ints.astype(np.int8).tobytes(), np.uint8)
    new_scales = np.where(fits, step, scales)
    weight.quantization.scale = new_scales.astype(np.float32)
    weight.quantization.zeroPoint = np.zeros(len(scales), np.int64)
    if len(op.inputs) > 2 and op.inputs[2] >= 0:  # int32 bias at input scale x weight scale, per channel.
      bias = subgraph.tensors[op.inputs[2]]
      bias_scales = np.asarray(bias.quantization.scale, np.float64)
      new_bias_scales = bias_scales * new_scales / scales
      values = np.round(_buffer(model, bias, np.int32) * bias_scales / new_bias_scales)
      model.buffers[bias.buffer].data = np.frombuffer(values.astype(np.int32).tobytes(), np.uint8)
      bias.quantization.scale = new_bias_scales.astype(np.float32)
    kept += int(fits.sum())
  return bytes(flatbuffer_utils.convert_object_to_bytearray(model)), kept, total
