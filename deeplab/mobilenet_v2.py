"""MobileNetV2 as DeepLab's encoder: keras.applications layer names, atrous depthwise convs past the output stride.

The layers are named exactly as in `keras.applications.MobileNetV2` so that ImageNet weights copy over by name
(`copy_imagenet_weights`). Two differences from that model, neither of which touches a weight:
  * strided depthwise convs pad "same" instead of ZeroPadding2D + "valid", which equals TensorFlow's SAME
    padding (what the weights were trained with) for every input size, not only even ones;
  * past `output_stride`, strides become 1 and the following depthwise convs are dilated instead, as in
    DeepLab's MobileNetV2 (research/slim `mobilenet.py`): the layer whose stride is removed keeps the current
    rate, the ones after it use rate * stride.
The encoder stops at block_16 (320 channels), DeepLab's `layer_18` end point: the 1x1 Conv_1 (1280 channels)
of the classifier is not part of DeepLab's feature extractor.
"""

from collections.abc import Iterable

import keras
import tensorflow as tf

# (expansion, filters, stride) of the 17 inverted-residual blocks, block_0 ("expanded_conv") .. block_16.
INVERTED_RESIDUAL_BLOCKS = (
  (1, 16, 1),
  (6, 24, 2),
  (6, 24, 1),
  (6, 32, 2),
  (6, 32, 1),
  (6, 32, 1),
  (6, 64, 2),
  (6, 64, 1),
  (6, 64, 1),
  (6, 64, 1),
  (6, 96, 1),
  (6, 96, 1),
  (6, 96, 1),
  (6, 160, 2),
  (6, 160, 1),
  (6, 160, 1),
  (6, 320, 1),
)
OUTPUT_STRIDES = (8, 16, 32)
LOW_LEVEL_FEATURE = "block_2_depthwise_relu"  # DeepLab's decoder end point `layer_4/depthwise_output` (stride 4).
HIGH_LEVEL_FEATURE = "block_16_project_BN"  # DeepLab's `layer_18`, the last inverted-residual block.
BN_EPSILON = 1e-3  # Keras MobileNetV2's; the shared ImageNet weights' moving variance (1 - eps) assumes it.


def make_divisible(value: float, divisor: int = 8) -> int:
  """Channel rounding of MobileNetV2 (and of keras.applications, so that weight shapes agree)."""
  rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
  return rounded + divisor if rounded < 0.9 * value else rounded


@keras.saving.register_keras_serializable(package="trainer")
class FusedBatchNormalization(keras.layers.BatchNormalization):
  """keras.layers.BatchNormalization computed by TensorFlow's fused kernel (FusedBatchNormV3) on NHWC input.

  Keras 3 normalises with separate moments/sub/mul/add ops in float32 (casting float16 inputs up and back);
  the fused op does it in one pass on the input's dtype with float32 statistics, and oneDNN fuses it further.
  Same variables, names, momentum update and inference-when-frozen behaviour as the Keras layer, so weights
  and checkpoints are interchangeable; anything unusual (masks, renorm, other ranks or axes) uses the Keras
  path. The moving variance is updated with the unbiased batch variance, as tf.keras 2 and TF's kernel do.
  Keras's own layer made this model's CPU training step several times slower (benchmarks/model_throughput.py).
  """

  def _can_fuse(self, inputs, mask) -> bool:
    return (
      mask is None
      and not self.renorm
      and not self.synchronized
      and self.scale
      and self.center
      and len(inputs.shape) == 4
      and self.axis in (-1, 3)
      and inputs.dtype in (tf.float32, tf.float16, tf.bfloat16)
    )

  def call(self, inputs, training=None, mask=None):
    if not self._can_fuse(inputs, mask):
      return super().call(inputs, training=training, mask=mask)
    gamma, beta = tf.convert_to_tensor(self.gamma), tf.convert_to_tensor(self.beta)
    moving_mean = tf.convert_to_tensor(self.moving_mean)
    moving_variance = tf.convert_to_tensor(self.moving_variance)

    def normalize(x, is_training, exponential_avg_factor=1.0):
      return tf.raw_ops.FusedBatchNormV3(
        x=x,
        scale=gamma,
        offset=beta,
        mean=moving_mean,
        variance=moving_variance,
        epsilon=self.epsilon,
        exponential_avg_factor=exponential_avg_factor,
        is_training=is_training,
      )

    if training and self.trainable:
      outputs, mean, variance, *_ = normalize(inputs, True, 1.0 - self.momentum)
      # With exponential_avg_factor < 1 the kernel returns the updated running statistics.
      self.moving_mean.assign(mean)
      self.moving_variance.assign(variance)
      return outputs
    if not training:
      return normalize(inputs, False)[0]
    # A frozen layer in a training step is a fixed per-channel affine map: its input gradient is dy * scale.
    # FusedBatchNormGradV3 would also reduce dy for the (unwanted) gamma/beta gradients: ~11% of a
    # frozen-backbone training step's CPU time.
    scale = gamma * tf.math.rsqrt(moving_variance + self.epsilon)

    @tf.custom_gradient
    def frozen(x):
      return normalize(x, False)[0], lambda dy: dy * tf.cast(scale, dy.dtype)

    return frozen(inputs)


def _block_strides(output_stride: int) -> list[tuple[int, int]]:
  """(stride, dilation) of each block's depthwise conv for an output stride, the DeepLab way."""
  if output_stride not in OUTPUT_STRIDES:
    raise ValueError(f"output_stride must be one of {OUTPUT_STRIDES}, got {output_stride}")
  current_stride, rate, result = 2, 1, []  # Conv1 has stride 2.
  for _, _, stride in INVERTED_RESIDUAL_BLOCKS:
    if stride > 1 and current_stride >= output_stride:
      result.append((1, rate))
      rate *= stride
    else:
      result.append((stride, rate))
      current_stride *= stride
  return result


def mobilenet_v2_features(
  inputs: keras.KerasTensor,
  *,
  alpha: float = 1.0,
  output_stride: int = 16,
  bn_momentum: float = 0.9,
  depth_divisor: int = 8,
) -> tuple[dict[str, keras.KerasTensor], list[keras.Layer]]:
  """Builds the encoder on `inputs` (already scaled to [-1, 1]).

  depth_divisor: channel counts are `alpha` x MobileNetV2's rounded to a multiple of it. 8 is keras.applications'
  rounding (what ImageNet weights need); research/deeplab rounds to 1 below alpha 1.0 (its published depth-0.5
  models have 12-channel blocks where 8 gives 16).

  Returns ({"low_level": stride-4 features, "high_level": final features}, the encoder's layers in order).
  """
  layers: list[keras.Layer] = []

  def add(layer: keras.Layer) -> keras.Layer:
    layers.append(layer)
    return layer

  def batch_norm(name: str) -> keras.Layer:
    return add(FusedBatchNormalization(epsilon=BN_EPSILON, momentum=bn_momentum, name=name))

  x = add(
    keras.layers.Conv2D(
      make_divisible(32 * alpha, depth_divisor), 3, strides=2, padding="same", use_bias=False, name="Conv1"
    )
  )(inputs)
  x = batch_norm("bn_Conv1")(x)
  x = add(keras.layers.ReLU(6.0, name="Conv1_relu"))(x)
  features = {}
  for block_id, ((expansion, filters, stride), (layer_stride, rate)) in enumerate(
    zip(INVERTED_RESIDUAL_BLOCKS, _block_strides(output_stride), strict=True)
  ):
    prefix = f"block_{block_id}_" if block_id else "expanded_conv_"
    in_channels = x.shape[-1]
    out_channels = make_divisible(int(filters * alpha), depth_divisor)
    block_input = x
    if block_id:
      x = add(keras.layers.Conv2D(expansion * in_channels, 1, use_bias=False, name=f"{prefix}expand"))(x)
      x = batch_norm(f"{prefix}expand_BN")(x)
      x = add(keras.layers.ReLU(6.0, name=f"{prefix}expand_relu"))(x)
    x = add(
      keras.layers.DepthwiseConv2D(
        3, strides=layer_stride, dilation_rate=rate, padding="same", use_bias=False, name=f"{prefix}depthwise"
      )
    )(x)
    x = batch_norm(f"{prefix}depthwise_BN")(x)
    x = add(keras.layers.ReLU(6.0, name=f"{prefix}depthwise_relu"))(x)
    if f"{prefix}depthwise_relu" == LOW_LEVEL_FEATURE:
      features["low_level"] = x
    x = add(keras.layers.Conv2D(out_channels, 1, use_bias=False, name=f"{prefix}project"))(x)
    x = batch_norm(f"{prefix}project_BN")(x)
    if in_channels == out_channels and stride == 1:  # keras.applications' rule, on the original stride.
      x = add(keras.layers.Add(name=f"{prefix}add"))([block_input, x])
  features["high_level"] = x
  return features, layers


def _reference_mobilenet_v2(weights: str, alpha: float) -> keras.Model:
  """keras.applications.MobileNetV2 (no top) holding `weights`, with errors that say what to do."""
  if weights != "imagenet" and not tf.io.gfile.exists(weights):
    raise FileNotFoundError(f"backbone_weights file not found: {weights}")
  try:
    return keras.applications.MobileNetV2(input_shape=(224, 224, 3), alpha=alpha, include_top=False, weights=weights)
  except Exception as error:  # Keras raises assorted types (ValueError, OSError, URL errors).
    if weights == "imagenet":
      raise RuntimeError(
        f"Could not get Keras's ImageNet MobileNetV2 weights (alpha={alpha}); they are downloaded from the "
        f"internet on first use. Offline, pass backbone_weights=<path to a no-top MobileNetV2 "
        f".weights.h5 of the same alpha>. Cause: {type(error).__name__}: {error}"
      ) from error
    raise ValueError(
      f"{weights} is not a usable weights file for keras.applications.MobileNetV2(alpha={alpha}, "
      f"include_top=False): {type(error).__name__}: {error}"
    ) from error


def copy_imagenet_weights(layers: Iterable[keras.Layer], weights: str, alpha: float) -> int:
  """Copies MobileNetV2 weights (a .weights.h5 path or "imagenet") into `layers` by layer name.

  Keras weight files match layers by order, not name, so they cannot be loaded into a model with a head;
  instead the file is loaded into keras.applications.MobileNetV2 and each layer copied over. Raises if any
  weighted layer has no counterpart or a different shape. Returns the number of layers copied.
  """
  reference = _reference_mobilenet_v2(weights, alpha)
  reference_layers = {layer.name: layer for layer in reference.layers}
  copied = 0
  for layer in layers:
    if not layer.weights:
      continue
    source = reference_layers.get(layer.name)
    if source is None:
      raise ValueError(f"backbone layer {layer.name!r} has no counterpart in keras.applications.MobileNetV2")
    values = source.get_weights()
    expected = [tuple(w.shape) for w in layer.weights]
    if [v.shape for v in values] != expected:
      raise ValueError(
        f"backbone layer {layer.name!r}: weight shapes {expected} differ from the "
        f"file's {[v.shape for v in values]} (is `weights` for alpha={alpha}?)"
      )
    layer.set_weights(values)
    copied += 1
  return copied
