"""DeepLabV3+ (Chen et al. 2018) on a MobileNetV2 encoder, as a Keras 3 functional model.

image [B, H, W, 3] in [0, 255] -> x/127.5 - 1 (pixels.py) -> MobileNetV2 (atrous past `output_stride`, see
  mobilenet_v2.py)
  -> ASPP: image pooling + 1x1 + one 3x3 branch per atrous rate (none: DeepLab's lean "mobile" head), 256 ch
  -> decoder: upsample to stride 4, concat with the stride-4 features projected to 48 ch, two 3x3 convs (256)
  -> 1x1 logits (float32) -> bilinear resize to the input's size: logits [B, H, W, num_classes].
Resizes follow the input's dynamic shape, so any H, W works (odd ones, non-multiples of the output stride).

Two variants serve published DeepLab models (inference/importing.py): `decoder=False` is DeepLabV3 as Google's
mobile VOC models are (ASPP -> 1x1 `logits` -> resize), and `residual_decoder=True` is DeepLabV3+ whose decoder
adds a correction to those ASPP logits at stride 4 (its own 1x1 `decoder_logits`, zero at start), weighted by
how unsure they are (UncertainRefinement), instead of replacing them: a model fine-tuned from a DeepLabV3
starts at exactly the DeepLabV3's predictions.
Layer names follow DeepLab's scopes (`aspp0`, `aspp_projection` = `concat_projection`, `decoder_conv0_*`).
"""

import keras
import tensorflow as tf

from deeplab import mobilenet_v2
from deeplab import pixels

ASPP_FILTERS = 256
LOW_LEVEL_FILTERS = 48
DECODER_FILTERS = 256
ASPP_DROPOUT = 0.1  # DeepLab's keep_prob 0.9 after the ASPP projection.

# The package name in the registered names ("trainer>SegmentationModel") is where these classes were first
# defined: .keras files written then name them so, and still load.


@keras.saving.register_keras_serializable(package="trainer")
class ResizeLike(keras.layers.Layer):
  """Bilinearly resizes `inputs[0]` to the spatial size of `inputs[1]` (a size only known at run time).

  align_corners: TF1's corner-aligned resize, which research/deeplab's models were trained with (their 513 =
  16 x 32 + 1 crops are made for it); False: half-pixel centres, tf.image.resize's.
  """

  def __init__(self, align_corners: bool = False, **kwargs):
    super().__init__(**kwargs)
    self.align_corners = align_corners

  def call(self, inputs):
    images, reference = inputs
    size = tf.shape(reference)[1:3]
    # Bilinear resizes compute in float32; a float16/bfloat16 input is cast up here, not inside the op, because
    # XLA's ResizeBilinearGrad of a half-precision input mixes precisions and fails to compile.
    as_float32 = tf.cast(images, tf.float32)
    if self.align_corners:
      resized = tf.raw_ops.ResizeBilinear(images=as_float32, size=size, align_corners=True, half_pixel_centers=False)
    else:
      resized = tf.image.resize(as_float32, size, method="bilinear")
    return tf.cast(resized, images.dtype)

  def get_config(self):
    return {**super().get_config(), "align_corners": self.align_corners}

  def compute_output_shape(self, input_shapes):
    images, reference = input_shapes
    return (images[0], reference[1], reference[2], images[3])


@keras.saving.register_keras_serializable(package="trainer")
class SegmentationModel(keras.Model):
  """The functional DeepLabV3+ graph, whose train step first passes every training batch (x, y) through
  `prepare_training_batch` when one is set.

  The trainer sets it when it compiles the model (trainer/augment.py's on-device scale, crop and flip of the
  input pipeline's canvases); it is not part of the model's config, so a model built or loaded without it
  trains on (images, labels) batches as they are.
  """

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self.prepare_training_batch = None

  def train_step(self, data):
    x, y, *rest = data
    if self.prepare_training_batch is not None:
      x, y = self.prepare_training_batch(x, y)
    return self._logs_to_reduce(super().train_step((x, y, *rest)))

  def test_step(self, data):
    return self._logs_to_reduce(super().test_step(data))

  def _logs_to_reduce(self, logs):
    """Under MultiWorkerMirroredStrategy, a step's scalar logs as [1] tensors: Keras (3.15) averages them over the
    workers with strategy.reduce("MEAN", value, axis=0), which a scalar has no axis for; a [1] tensor averages to
    the same scalar (tests/test_trainer.py's multi-worker run covers it)."""
    if not isinstance(self.distribute_strategy, tf.distribute.MultiWorkerMirroredStrategy):
      return logs
    return tf.nest.map_structure(lambda value: tf.reshape(value, [1]) if value.shape.rank == 0 else value, logs)

  @classmethod
  def from_config(cls, config, custom_objects=None):
    config = dict(config)
    config.pop("train_crop_size", None)  # Written into the config by earlier versions; now the trainer's.
    return super().from_config(config, custom_objects)


@keras.saving.register_keras_serializable(package="trainer")
class UncertainRefinement(keras.layers.Layer):
  """coarse + (1 - max softmax(coarse)) x correction: the decoder's correction acts where the coarse logits are
  unsure (boundaries, small parts) and fades where they are confident, as PointRend (Kirillov et al. 2020)
  refines only uncertain points. A decoder fine-tuned on a few hundred images can then sharpen an imported
  model's masks but hardly overturn the classes it learnt from 10k+ images. The gate passes no gradient."""

  def call(self, inputs):
    coarse, correction = inputs
    confidence = tf.reduce_max(tf.nn.softmax(tf.stop_gradient(coarse)), axis=-1, keepdims=True)
    return coarse + (1.0 - confidence) * correction


def _conv_bn_relu(
  x, filters: int, name: str, bn_momentum: float, kernel_size: int = 1, rate: int = 1, separable: bool = False
):
  """kxk conv (or depthwise kxk + BN + ReLU + pointwise, DeepLab's split_separable_conv2d) + BN + ReLU."""

  def bn_relu(x, suffix):
    x = mobilenet_v2.FusedBatchNormalization(
      epsilon=mobilenet_v2.BN_EPSILON, momentum=bn_momentum, name=f"{name}{suffix}_bn"
    )(x)
    return keras.layers.ReLU(name=f"{name}{suffix}_relu")(x)

  if separable and kernel_size > 1:
    x = keras.layers.DepthwiseConv2D(
      kernel_size, dilation_rate=rate, padding="same", use_bias=False, name=f"{name}_depthwise"
    )(x)
    x = bn_relu(x, "_depthwise")
    x = keras.layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_pointwise")(x)
    return bn_relu(x, "_pointwise")
  x = keras.layers.Conv2D(
    filters, kernel_size, dilation_rate=rate, padding="same", use_bias=False, name=f"{name}_conv"
  )(x)
  return bn_relu(x, "")


def _aspp(features, rates: tuple[int, ...], separable: bool, bn_momentum: float):
  pooled = keras.layers.GlobalAveragePooling2D(keepdims=True, name="aspp_pooling")(features)
  pooled = _conv_bn_relu(pooled, ASPP_FILTERS, "aspp_pooling", bn_momentum)
  branches = [
    ResizeLike(name="aspp_pooling_resize")([pooled, features]),  # A 1x1 map: any resize broadcasts.
    _conv_bn_relu(features, ASPP_FILTERS, "aspp0", bn_momentum),
  ]
  for index, rate in enumerate(rates, start=1):
    branches.append(
      _conv_bn_relu(features, ASPP_FILTERS, f"aspp{index}", bn_momentum, kernel_size=3, rate=rate, separable=separable)
    )
  x = keras.layers.Concatenate(name="aspp_concat")(branches)
  x = _conv_bn_relu(x, ASPP_FILTERS, "aspp_projection", bn_momentum)
  return keras.layers.Dropout(ASPP_DROPOUT, name="aspp_dropout")(x)


def _decoder(aspp_output, low_level, separable: bool, bn_momentum: float, align_corners: bool):
  low_level = _conv_bn_relu(low_level, LOW_LEVEL_FILTERS, "decoder_low_level", bn_momentum)
  x = ResizeLike(align_corners, name="decoder_upsample")([aspp_output, low_level])
  x = keras.layers.Concatenate(name="decoder_concat")([x, low_level])
  for index in range(2):
    x = _conv_bn_relu(x, DECODER_FILTERS, f"decoder_conv{index}", bn_momentum, kernel_size=3, separable=separable)
  return x


def build_deeplabv3plus(
  *,
  num_classes: int = 21,
  input_shape=(None, None, 3),
  output_stride: int = 16,
  alpha: float = 1.0,
  aspp_rates: tuple[int, ...] = (6, 12, 18),
  separable: bool = True,
  backbone_weights: str | None = None,
  freeze_backbone_bn: bool = True,
  bn_momentum: float = 0.9,
  decoder: bool = True,
  residual_decoder: bool = False,
  align_corners: bool = False,
  depth_divisor: int = 8,
  name: str = "deeplabv3plus",
) -> keras.Model:
  """DeepLabV3+ / MobileNetV2: raw RGB pixels [0, 255] in, float32 logits at the input resolution out.

  output_stride: 16 or 8 (32: plain MobileNetV2, no atrous convs). aspp_rates: DeepLab uses (6, 12, 18) at
  OS 16, (12, 24, 36) at OS 8, () for the lean mobile head. separable: depthwise-separable 3x3 convs in ASPP
  and decoder. backbone_weights: None, a no-top MobileNetV2 .weights.h5 of the same alpha, or "imagenet"
  (Keras's download). freeze_backbone_bn: encoder BN layers non-trainable, i.e. always in inference mode
  (the shared ImageNet weights have folded BN; small batches would destroy it). bn_momentum applies to every
  BN layer (0.9: Keras's 0.99 leaves moving averages far behind in short runs). decoder,
  residual_decoder, align_corners: see the module docstring; depth_divisor: see mobilenet_v2_features.
  """
  if residual_decoder and not decoder:
    raise ValueError("residual_decoder=True needs decoder=True")
  inputs = keras.Input(shape=input_shape, name="image")
  x = keras.layers.Rescaling(pixels.NORMALISE_SCALE, offset=pixels.NORMALISE_OFFSET, name="rescale_to_unit")(inputs)
  features, backbone_layers = mobilenet_v2.mobilenet_v2_features(
    x, alpha=alpha, output_stride=output_stride, bn_momentum=bn_momentum, depth_divisor=depth_divisor
  )
  x = _aspp(features["high_level"], tuple(aspp_rates), separable, bn_momentum)
  if not decoder:
    x = keras.layers.Conv2D(num_classes, 1, dtype="float32", name="logits")(x)
  elif not residual_decoder:
    x = _decoder(x, features["low_level"], separable, bn_momentum, align_corners)
    x = keras.layers.Conv2D(num_classes, 1, dtype="float32", name="logits")(x)
  else:
    coarse = keras.layers.Conv2D(num_classes, 1, dtype="float32", name="logits")(x)
    refined = _decoder(x, features["low_level"], separable, bn_momentum, align_corners)
    correction = keras.layers.Conv2D(
      num_classes, 1, use_bias=False, dtype="float32", kernel_initializer="zeros", name="decoder_logits"
    )(refined)  # No bias: a refinement has no class prior.
    coarse = ResizeLike(align_corners, dtype="float32", name="logits_to_decoder")([coarse, correction])
    x = UncertainRefinement(dtype="float32", name="decoder_refine")([coarse, correction])
  logits = ResizeLike(align_corners, dtype="float32", name="logits_upsample")([x, inputs])
  model = SegmentationModel(inputs, logits, name=name)

  if backbone_weights is not None:
    mobilenet_v2.copy_imagenet_weights(backbone_layers, backbone_weights, alpha)
  if freeze_backbone_bn:
    for layer in backbone_layers:
      if isinstance(layer, keras.layers.BatchNormalization):
        layer.trainable = False
  return model
