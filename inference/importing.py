"""Google's published DeepLab models (TFLite files, research/deeplab TF1 checkpoints) as runs of our model.

Both sources name their weights by research/deeplab's TF1 scopes (`MobilenetV2/expanded_conv_3/expand`,
`aspp0`, `concat_projection`, `logits/semantic`, `decoder/feature_projection0`, ...). Each reader returns
{scope: Weights} in Keras's layouts; `assign` puts every scope into exactly one layer of a model built to match
(`model_config`) and fails on the first weight that has no place or the wrong shape.

Batch norm: a TFLite file has it folded into each conv (kernel scaled, plus a bias), carried here as gamma 1,
beta = bias, mean 0, variance 1 - eps, i.e. the identity plus a bias in inference mode (keep it frozen). A
checkpoint's BN statistics are kept, with gamma rescaled for our epsilon so that inference is unchanged.
"""

from collections.abc import Sequence
import dataclasses
import json
import os
import re
import tempfile

from absl import logging
import keras
import ml_collections
import numpy as np
import tensorflow as tf

from configs import base
from contracts import download
from contracts import errors
from contracts import run_dir
from deeplab import building
from deeplab import mobilenet_v2
from deeplab import pixels
from inference import tflite_interpreter

# research/deeplab's batch-norm epsilons: slim's MobileNetV2 scope (1e-3) and DeepLab's own layers (1e-5).
BACKBONE_BN_EPSILON = 1e-3
HEAD_BN_EPSILON = 1e-5
# Google's models see DeepLab's canvases (pixels.DEEPLAB_CANVAS), padded with the uint8 mean pixel.


class SourceModelError(errors.UserError, ValueError):
  """A source that cannot become our model, said in one line."""


@dataclasses.dataclass
class Weights:
  """One DeepLab scope's weights in Keras layout: a conv kernel, and a bias or batch norm (gamma, beta, mean,
  variance at our epsilon)."""

  kernel: np.ndarray
  bias: np.ndarray | None = None
  batch_norm: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None


def _folded_batch_norm(bias: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  ones = np.ones_like(bias)
  return ones, bias, np.zeros_like(bias), ones - mobilenet_v2.BN_EPSILON


# ---------------------------------------------------------------------------------------------------------------
# Readers
# ---------------------------------------------------------------------------------------------------------------

_SCOPE = re.compile(
  r"^(.*?)/(?:weights_quant|Conv2D_Fold|depthwise_Fold|Conv2D|weights|depthwise_weights|"
  r"BiasAdd)(?:/|$)"
)


def _tflite_scope(tensor_name: str) -> str:
  """The TF1 scope of a TFLite weight tensor: its name is ';'-joined fused names, the last the weight's own."""
  name = tensor_name.split(";")[-1]
  match = _SCOPE.match(name)
  if not match:
    raise SourceModelError(f"cannot tell the DeepLab scope of TFLite tensor {tensor_name!r}")
  return match.group(1)


def _dequantize(interpreter, detail: dict) -> np.ndarray:
  values = interpreter.get_tensor(detail["index"])
  quantization = detail["quantization_parameters"]
  scales, zero_points = quantization["scales"], quantization["zero_points"]
  if not len(scales):
    return values.astype(np.float32)
  shape = [1] * values.ndim
  if len(scales) > 1:  # Per channel, along quantized_dimension.
    shape[quantization["quantized_dimension"]] = len(scales)
  return ((values.astype(np.float32) - zero_points.reshape(shape)) * scales.reshape(shape)).astype(np.float32)


def read_tflite(path: str) -> dict[str, Weights]:
  """The conv weights of a DeepLab TFLite file (uint8/int8 quantized or float), dequantized: (q - zero_point) x
  scale, per tensor or per channel."""
  interpreter = tflite_interpreter.make_interpreter(path)
  details = {detail["index"]: detail for detail in interpreter.get_tensor_details()}
  scopes: dict[str, Weights] = {}
  # The op list has no public API; _get_ops_details is what tf.lite's own analyzer tooling uses.
  for op in interpreter._get_ops_details():  # Private: no public API gives this.
    if op["op_name"] not in ("CONV_2D", "DEPTHWISE_CONV_2D"):
      continue
    weight_detail, bias_detail = details[op["inputs"][1]], details[op["inputs"][2]]
    scope = _tflite_scope(weight_detail["name"])
    kernel = _dequantize(interpreter, weight_detail)
    bias = _dequantize(interpreter, bias_detail)
    depthwise = op["op_name"] == "DEPTHWISE_CONV_2D"
    # TFLite: conv [out, kh, kw, in], depthwise [1, kh, kw, channels]; Keras: [kh, kw, in, out], [kh, kw, ch, 1].
    kernel = kernel[0][..., np.newaxis] if depthwise else kernel.transpose(1, 2, 3, 0)
    if scope in scopes:
      raise SourceModelError(f"{path}: two convolutions in scope {scope!r}")
    if scope.startswith("logits"):
      scopes[scope] = Weights(kernel, bias=bias)
    else:
      scopes[scope] = Weights(kernel, batch_norm=_folded_batch_norm(bias))
  if not scopes:
    raise SourceModelError(f"{path} has no convolutions: is it a DeepLab TFLite model?")
  return scopes


def read_checkpoint(prefix: str) -> dict[str, Weights]:
  """The weights of a research/deeplab TF1 checkpoint (float, batch norm unfolded), e.g. model.ckpt-30000."""
  try:
    reader = tf.train.load_checkpoint(prefix)
  except (tf.errors.OpError, ValueError) as error:
    raise SourceModelError(f"cannot read checkpoint {prefix}: {str(error).splitlines()[0]}") from None
  names = set(reader.get_variable_to_shape_map())
  scopes: dict[str, Weights] = {}
  for name in sorted(names):
    match = re.match(r"^(.*)/(weights|depthwise_weights)$", name)
    if not match or "/ExponentialMovingAverage" in name or name.startswith("global_step"):
      continue
    scope = match.group(1)
    kernel = reader.get_tensor(name).astype(np.float32)
    if f"{scope}/biases" in names:
      scopes[scope] = Weights(kernel, bias=reader.get_tensor(f"{scope}/biases").astype(np.float32))
      continue
    bn = [f"{scope}/BatchNorm/{v}" for v in ("gamma", "beta", "moving_mean", "moving_variance")]
    missing = [v for v in bn if v not in names]
    if missing:
      raise SourceModelError(f"checkpoint {prefix}: {name} has neither {scope}/biases nor {missing[0]}")
    gamma, beta, mean, variance = (reader.get_tensor(v).astype(np.float32) for v in bn)
    epsilon = BACKBONE_BN_EPSILON if scope.startswith("MobilenetV2/") else HEAD_BN_EPSILON
    gamma = gamma * np.sqrt(variance + mobilenet_v2.BN_EPSILON) / np.sqrt(variance + epsilon)
    scopes[scope] = Weights(kernel, batch_norm=(gamma, beta, mean, variance))
  if not scopes:
    raise SourceModelError(f"checkpoint {prefix} has no DeepLab weights (no */weights variables)")
  return scopes


# ---------------------------------------------------------------------------------------------------------------
# From DeepLab scopes to our layers
# ---------------------------------------------------------------------------------------------------------------


def layer_names(scope: str) -> tuple[str, str | None]:
  """(conv layer, batch-norm layer or None) of our model that hold a DeepLab scope's weights."""
  if scope == "MobilenetV2/Conv":
    return "Conv1", "bn_Conv1"
  match = re.fullmatch(r"MobilenetV2/expanded_conv(?:_(\d+))?/(expand|depthwise|project)", scope)
  if match:
    prefix = f"block_{match.group(1)}_" if match.group(1) else "expanded_conv_"
    return f"{prefix}{match.group(2)}", f"{prefix}{match.group(2)}_BN"
  if scope == "logits/semantic":
    return "logits", None
  fixed = {
    "image_pooling": "aspp_pooling_conv",
    "aspp0": "aspp0_conv",
    "concat_projection": "aspp_projection_conv",
    "decoder/feature_projection0": "decoder_low_level_conv",
  }
  if scope in fixed:
    return fixed[scope], fixed[scope][: -len("conv")] + "bn"
  match = re.fullmatch(r"(?:decoder/)?((?:aspp\d+|decoder_conv\d+)_(?:depthwise|pointwise))", scope)
  if match:
    return match.group(1), f"{match.group(1)}_bn"
  raise SourceModelError(f"DeepLab scope {scope!r} has no counterpart in our model")


def model_config(
  scopes: dict[str, Weights], *, aspp_rates: tuple[int, ...] = (6, 12, 18), output_stride: int = 16
) -> ml_collections.ConfigDict:
  """A full run config (configs/base.py) whose model has the source's architecture, for DeepLab's 513 canvases."""
  if "MobilenetV2/Conv" not in scopes or "logits/semantic" not in scopes:
    raise SourceModelError(
      "not a DeepLab MobileNetV2 model: no MobilenetV2/Conv or logits/semantic weights "
      f"(scopes: {', '.join(sorted(scopes)[:5])}, ...)"
    )
  config = base.get_config()
  m = config.model
  m.num_classes = int(scopes["logits/semantic"].kernel.shape[-1])
  m.alpha = scopes["MobilenetV2/Conv"].kernel.shape[-1] / 32
  m.depth_divisor = 8 if m.alpha == 1.0 else 1  # research/deeplab's feature_extractor.py rounding.
  num_branches = sum(1 for s in scopes if re.fullmatch(r"aspp\d+_depthwise|aspp\d+", s) and s != "aspp0")
  if num_branches and len(aspp_rates) != num_branches:
    raise SourceModelError(f"the source has {num_branches} atrous ASPP branches: give as many aspp_rates")
  m.aspp_rates = tuple(aspp_rates) if num_branches else ()
  m.separable = not any(re.fullmatch(r"aspp\d+", s) and s != "aspp0" for s in scopes)
  m.decoder = any(s.startswith("decoder") for s in scopes)
  m.output_stride = output_stride
  m.align_corners = True
  m.backbone_weights = ""
  m.freeze_backbone_bn = True
  config.input.crop_size = pixels.DEEPLAB_CANVAS
  config.input.eval_pad_to = pixels.DEEPLAB_CANVAS
  return config


def assign(model: keras.Model, scopes: dict[str, Weights]) -> int:
  """Sets every weight of `model` from `scopes`; raises on the first source weight without exactly one place of
  the right shape, and on any weighted layer left without a source. Returns the number of layers set."""
  layers = {layer.name: layer for layer in model.layers}
  filled = set()
  for scope, weights in sorted(scopes.items()):
    conv_name, bn_name = layer_names(scope)
    for name in (conv_name, bn_name):
      if name is not None and name not in layers:
        raise SourceModelError(f"DeepLab scope {scope!r} belongs in layer {name!r}, which this model does not have")
      if name in filled:
        raise SourceModelError(f"two DeepLab scopes land in layer {name!r} (the second: {scope!r})")
    conv = layers[conv_name]
    values = [weights.kernel] + ([weights.bias] if weights.bias is not None else [])
    _set(conv, values, scope)
    filled.add(conv_name)
    if bn_name is not None:
      if weights.batch_norm is None:
        raise SourceModelError(f"DeepLab scope {scope!r} has no batch norm for layer {bn_name!r}")
      _set(layers[bn_name], list(weights.batch_norm), scope)
      filled.add(bn_name)
  unfilled = [layer.name for layer in model.layers if layer.weights and layer.name not in filled]
  if unfilled:
    raise SourceModelError(f"the source has no weights for layer {unfilled[0]!r} (and {len(unfilled) - 1} more)")
  return len(filled)


def _set(layer: keras.Layer, values: list[np.ndarray], scope: str) -> None:
  expected = [tuple(w.shape) for w in layer.weights]
  got = [tuple(v.shape) for v in values]
  if expected != got:
    raise SourceModelError(
      f"DeepLab scope {scope!r}: weights of shapes {got} do not fit layer {layer.name!r} ({expected})"
    )
  layer.set_weights(values)


# ---------------------------------------------------------------------------------------------------------------
# Sources: a file, a folder, an archive or a URL
# ---------------------------------------------------------------------------------------------------------------


def _find_source(path: str) -> tuple[str, str]:
  """("tflite" | "checkpoint", path or checkpoint prefix) of a file or folder."""
  if path.endswith(".tflite"):
    return "tflite", path
  if tf.io.gfile.exists(path + ".index"):
    return "checkpoint", path
  if path.endswith(".index"):
    return "checkpoint", path[: -len(".index")]
  if tf.io.gfile.isdir(path):
    found = [
      os.path.join(root, name)
      for root, _, names in tf.io.gfile.walk(path)
      for name in names
      if name.endswith((".tflite", ".index"))
    ]
    checkpoints = sorted(f for f in found if f.endswith(".index"))
    tflites = sorted(f for f in found if f.endswith(".tflite"))
    if checkpoints:  # A model-zoo tarball: model.ckpt-N.{index,data-*} beside a frozen graph.
      return "checkpoint", checkpoints[-1][: -len(".index")]
    if tflites:
      return "tflite", tflites[0]
    raise SourceModelError(f"{path} holds no .tflite file and no checkpoint (*.index)")
  raise SourceModelError(f"{path}: not a .tflite file, a checkpoint prefix, a folder or an archive")


def read_source(
  source: str, *, download_dir: str | None = None, md5: str | None = None
) -> tuple[str, str, dict[str, Weights]]:
  """(kind, local path, scopes) of a .tflite, a checkpoint (prefix or folder), a .tar(.gz) of either, or an
  http(s) URL of any of these (downloaded with the project's resumable downloader, md5-checked when given)."""
  if source.startswith(("http://", "https://")):
    download_dir = download_dir or os.path.join(tempfile.gettempdir(), "published_models")
    local = os.path.join(download_dir, os.path.basename(source.split("?", 1)[0].rstrip("/")) or "model")
    try:
      source = download.fetch(source, local, md5, option="--source")
    except download.DownloadError as error:
      raise SourceModelError(str(error)) from None
  elif not tf.io.gfile.exists(source) and not tf.io.gfile.exists(source + ".index"):
    raise SourceModelError(f"{source}: no such file, folder or checkpoint")
  if source.endswith((".tar", ".tar.gz", ".tgz")):
    extracted = tempfile.mkdtemp(prefix="published_model_")
    try:
      download.extract_archive(source, extracted)
    except download.DownloadError as error:
      raise SourceModelError(str(error)) from None
    source = extracted
  kind, path = _find_source(source)
  logging.info("reading %s %s", kind, path)
  return kind, path, read_tflite(path) if kind == "tflite" else read_checkpoint(path)


# ---------------------------------------------------------------------------------------------------------------
# The check against the TFLite interpreter, and the run directory
# ---------------------------------------------------------------------------------------------------------------


def pad_to_canvas(image: np.ndarray, size: int = pixels.DEEPLAB_CANVAS) -> np.ndarray:
  """uint8 [h, w, 3] (h, w <= size) padded bottom/right with 128 to [size, size, 3], as Google's files expect."""
  height, width = image.shape[:2]
  if height > size or width > size:
    raise ValueError(f"image of {height}x{width} is larger than the {size}x{size} canvas")
  canvas = np.full((size, size, 3), pixels.MEAN_PIXEL_UINT8, np.uint8)
  canvas[:height, :width] = image
  return canvas


def tflite_classes(interpreter, image: np.ndarray) -> np.ndarray:
  """Class ids [h, w] of a uint8 RGB image from one of Google's TFLite files (uint8 pixels in, on a canvas)."""
  [detail] = interpreter.get_input_details()
  canvas = pad_to_canvas(image, int(detail["shape"][1]))
  interpreter.set_tensor(detail["index"], canvas[np.newaxis].astype(detail["dtype"]))
  interpreter.invoke()
  return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])[0][: image.shape[0], : image.shape[1]]


def compare_with_tflite(model: keras.Model, tflite_path: str, images: list[np.ndarray]) -> list[float]:
  """Per image, the fraction of its pixels where our model and the TFLite interpreter pick the same class, both
  on the same 513 canvas."""
  interpreter = tflite_interpreter.make_interpreter(tflite_path, os.cpu_count())
  size = int(interpreter.get_input_details()[0]["shape"][1])
  predict = tf.function(lambda x: tf.argmax(model(x, training=False), axis=-1))
  agreements = []
  for image in images:
    ours = predict(pad_to_canvas(image, size)[np.newaxis].astype(np.float32)).numpy()[0]
    ours = ours[: image.shape[0], : image.shape[1]]
    agreements.append(float(np.mean(ours == tflite_classes(interpreter, image))))
  return agreements


def write_run(model: keras.Model, config: ml_collections.ConfigDict, model_dir: str, report: dict) -> str:
  """A run directory as training leaves one (config.json, checkpoints/final.weights.h5) plus import.json."""
  tf.io.gfile.makedirs(run_dir.path(model_dir, run_dir.CHECKPOINTS))
  with tf.io.gfile.GFile(run_dir.path(model_dir, run_dir.CONFIG), "w") as f:
    f.write(config.to_json_best_effort(indent=2))
  weights = run_dir.path(model_dir, run_dir.FINAL_WEIGHTS)
  model.save_weights(weights)
  with tf.io.gfile.GFile(run_dir.path(model_dir, run_dir.IMPORT_REPORT), "w") as f:
    json.dump(report, f, indent=2)
  return weights


def import_model(
  source: str,
  model_dir: str,
  *,
  check_images: Sequence[np.ndarray] = (),
  aspp_rates: tuple[int, ...] = (6, 12, 18),
  output_stride: int = 16,
  download_dir: str | None = None,
  md5: str | None = None,
) -> dict:
  """Reads a published model, builds ours to match, sets every weight, checks it (TFLite sources: against the
  interpreter on `check_images`) and writes a run directory. Returns the report written to import.json."""
  kind, path, scopes = read_source(source, download_dir=download_dir, md5=md5)
  config = model_config(scopes, aspp_rates=aspp_rates, output_stride=output_stride)
  model = building.create_model(config)
  num_layers = assign(model, scopes)
  report = {
    "source": source,
    "kind": kind,
    "scopes": len(scopes),
    "layers_set": num_layers,
    "num_classes": config.model.num_classes,
    "alpha": config.model.alpha,
    "decoder": config.model.decoder,
  }
  if kind == "tflite" and check_images:
    agreements = compare_with_tflite(model, path, list(check_images))
    report["tflite_pixel_agreement"] = {
      "images": len(agreements),
      "mean": float(np.mean(agreements)),
      "min": float(np.min(agreements)),
    }
  report["weights"] = write_run(model, config, model_dir, report)
  return report
