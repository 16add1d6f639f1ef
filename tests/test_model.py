"""DeepLabV3+ / MobileNetV2 (deeplab/network.py, deeplab/mobilenet_v2.py): shapes, atrous strides, ImageNet weights,
mixed precision, frozen batch norm, FLOPs.

The tests of backbone weight files run on a generated file (random weights) and a generated photo, so that a clone
without ../shared covers the loading, and again on the ImageNet file and a real VOC photo where ../shared is."""

import math
import pathlib
import typing

import keras
import numpy as np
import pytest
import tensorflow as tf

from deeplab import flops
from deeplab import mobilenet_v2
from deeplab import network
from preprocessing import synthetic_voc
from trainer import augment

SMALL = dict(alpha=0.35)  # The narrowest MobileNetV2: the graph is the same, the tests are faster.
UNUSED_CLASSIFIER_LAYERS = {"Conv_1", "Conv_1_bn"}  # keras.applications' 1x1 1280 conv: not in DeepLab's encoder.


def _images(batch, height, width, seed=0):
  return np.random.default_rng(seed).uniform(0, 255, (batch, height, width, 3)).astype(np.float32)


def _features(model, names, images):
  return keras.Model(model.input, [model.get_layer(name).output for name in names])(images)


@pytest.fixture
def restore_policy():
  policy = keras.mixed_precision.global_policy()
  yield
  keras.mixed_precision.set_global_policy(policy)


class Backbone(typing.NamedTuple):
  weights: pathlib.Path  # A no-top MobileNetV2 (alpha 1.0) .weights.h5.
  photo: tf.Tensor  # float RGB [H, W, 3] in [0, 255].
  imagenet: bool  # The shared ImageNet file (dequantized uint8 kernels, folded batch norm) and a real VOC photo.


def _random_weights_file(path: pathlib.Path) -> pathlib.Path:
  """keras.applications' no-top MobileNetV2 with every weight random, batch-norm statistics too (Keras starts
  them all at 0 and 1): a layer left at its initialisation cannot pass for one copied from the file."""
  keras.utils.set_random_seed(5)
  net = keras.applications.MobileNetV2(input_shape=(224, 224, 3), include_top=False, weights=None)
  rng = np.random.default_rng(5)
  for layer in net.layers:
    if isinstance(layer, keras.layers.BatchNormalization):
      gamma, beta, mean, variance = layer.get_weights()
      layer.set_weights(
        [
          rng.uniform(0.5, 1.5, gamma.shape),
          rng.normal(0.0, 0.1, beta.shape),
          rng.normal(0.0, 0.1, mean.shape),
          rng.uniform(0.5, 1.5, variance.shape),
        ]
      )
  net.save_weights(str(path))
  return path


@pytest.fixture(scope="module", params=["generated", "imagenet"])
def backbone(request, tmp_path_factory) -> Backbone:
  """A weights file and a photo: generated always, the ImageNet file and a real VOC photo where ../shared is
  (only that instance skips without it)."""
  if request.param == "generated":
    weights = _random_weights_file(tmp_path_factory.mktemp("weights") / "mobilenet_v2_1.0_random_no_top.weights.h5")
    photo, _ = synthetic_voc.make_pair(np.random.default_rng(0), 281, 500)  # The size of the real photo below.
    return Backbone(weights, tf.constant(photo, tf.float32), imagenet=False)
  weights, voc_sample = request.getfixturevalue("imagenet_weights"), request.getfixturevalue("voc_sample")
  path = sorted((voc_sample / "JPEGImages").glob("*.jpg"))[0]
  return Backbone(
    weights, tf.cast(tf.io.decode_jpeg(tf.io.read_file(str(path)), channels=3), tf.float32), imagenet=True
  )


@pytest.mark.parametrize(
  "config, batch, height, width",
  [
    (dict(output_stride=16, aspp_rates=(6, 12, 18), separable=True, num_classes=21), 1, 65, 97),
    (dict(output_stride=8, aspp_rates=(12, 24, 36), separable=False, num_classes=5), 2, 40, 57),
    (dict(output_stride=16, aspp_rates=(), separable=True, num_classes=3), 3, 33, 48),
  ],
)
def test_logits_have_the_input_size(config, batch, height, width):
  model = network.build_deeplabv3plus(**SMALL, **config)
  logits = model(_images(batch, height, width))
  assert logits.shape == (batch, height, width, config["num_classes"])
  assert logits.dtype == tf.float32
  assert np.isfinite(logits.numpy()).all()
  # One model serves any size: a second, different one (not a multiple of the output stride either).
  assert model(_images(1, 31, 70)).shape == (1, 31, 70, config["num_classes"])


def test_513_pixel_input_with_the_lean_head():
  model = network.build_deeplabv3plus(**SMALL, aspp_rates=())
  assert model(_images(1, 513, 513)).shape == (1, 513, 513, 21)


@pytest.mark.parametrize(
  "output_stride, strided, dilations",
  [
    (
      16,
      {"block_1": 2, "block_3": 2, "block_6": 2, "block_13": 1},
      {"block_12": 1, "block_13": 1, "block_14": 2, "block_16": 2},
    ),
    (
      8,
      {"block_1": 2, "block_3": 2, "block_6": 1, "block_13": 1},
      {"block_5": 1, "block_6": 1, "block_7": 2, "block_12": 2, "block_13": 2, "block_14": 4, "block_16": 4},
    ),
  ],
)
def test_dilation_replaces_stride(output_stride, strided, dilations):
  model = network.build_deeplabv3plus(**SMALL, output_stride=output_stride, aspp_rates=())
  for block, stride in strided.items():
    assert model.get_layer(f"{block}_depthwise").strides == (stride, stride), block
  for block, rate in dilations.items():
    assert model.get_layer(f"{block}_depthwise").dilation_rate == (rate, rate), block
  # TF SAME padding: each stride-2 layer gives ceil(size / 2).
  deepest, low_level = _features(
    model, [mobilenet_v2.HIGH_LEVEL_FEATURE, mobilenet_v2.LOW_LEVEL_FEATURE], _images(1, 97, 130)
  )
  assert deepest.shape[1:3] == (math.ceil(97 / output_stride), math.ceil(130 / output_stride))
  assert deepest.shape[3] == mobilenet_v2.make_divisible(320 * 0.35)
  assert low_level.shape[1:3] == (math.ceil(97 / 4), math.ceil(130 / 4))


def test_bad_output_stride_is_refused():
  with pytest.raises(ValueError, match="output_stride"):
    network.build_deeplabv3plus(**SMALL, output_stride=4)


@pytest.fixture(scope="module")
def keras_mobilenet_v2(backbone):
  return keras.applications.MobileNetV2(input_shape=(224, 224, 3), include_top=False, weights=str(backbone.weights))


def test_imagenet_weights_are_copied_by_name(backbone, keras_mobilenet_v2):
  model = network.build_deeplabv3plus(backbone_weights=str(backbone.weights), aspp_rates=())
  reference = {layer.name: layer for layer in keras_mobilenet_v2.layers if layer.weights}
  ours = {layer.name: layer for layer in model.layers if layer.name in reference}
  assert set(ours) == set(reference) - UNUSED_CLASSIFIER_LAYERS
  for name, layer in ours.items():
    for mine, theirs in zip(layer.get_weights(), reference[name].get_weights(), strict=True):
      np.testing.assert_array_equal(mine, theirs, err_msg=name)
  # And they are the file's (not two equal initialisations): random batch-norm statistics in the generated file...
  if not backbone.imagenet:
    fresh = network.build_deeplabv3plus(aspp_rates=())
    for name in ("bn_Conv1", "block_7_depthwise_BN", "block_16_project_BN"):
      for mine, initial in zip(model.get_layer(name).get_weights(), fresh.get_layer(name).get_weights(), strict=True):
        assert not np.allclose(mine, initial), name
    return
  # ...dequantized uint8 kernels and folded batch norm in ImageNet's.
  for name in ("Conv1", "block_7_depthwise", "block_16_project"):
    assert len(np.unique(model.get_layer(name).get_weights()[0])) <= 256, name
  np.testing.assert_allclose(model.get_layer("block_9_expand_BN").moving_variance, 1 - 1e-3)


@pytest.mark.parametrize("size", [224, 225])
def test_features_agree_with_keras_applications_on_a_voc_photo(backbone, size):
  """At output stride 32 our encoder is MobileNetV2; at 16 it is, up to the first stride it replaces."""
  image = tf.image.resize(backbone.photo, (size, size))[None]
  # A static size makes keras.applications pad stride-2 convs as TF's SAME, for odd sizes too.
  reference = keras.applications.MobileNetV2(
    input_shape=(size, size, 3), include_top=False, weights=str(backbone.weights)
  )
  names = ["block_2_depthwise_relu", "block_12_add", "block_16_project_BN"]
  expected = _features(reference, names, keras.applications.mobilenet_v2.preprocess_input(image.numpy()))
  for output_stride, compared in ((32, names), (16, names[:2])):
    model = network.build_deeplabv3plus(
      output_stride=output_stride, backbone_weights=str(backbone.weights), aspp_rates=()
    )
    actual = _features(model, compared, image)  # Raw pixels: the model scales them itself.
    for name, mine, theirs in zip(compared, actual, expected[: len(compared)], strict=True):
      assert mine.shape == theirs.shape, name
      # Other kernels for the same features (our fused batch norm and SAME padding against Keras's separate ops and
      # explicit padding): 2e-7 of the largest feature on generated weights, up to 1.3e-5 on ImageNet's large
      # folded weights (block 2, where sums cancel most); 1e-4 is 8x that, and still sees a batch-norm epsilon
      # off by 1e-3 (~5e-4 a layer).
      np.testing.assert_allclose(
        mine,
        theirs,
        rtol=1e-4,
        atol=1e-4 * float(np.abs(theirs).max()),
        err_msg=f"{name} at output stride {output_stride}",
      )
  # Past the replaced stride the features differ in size (and so in values).
  assert _features(model, names[2:], image)[0].shape[1] == math.ceil(size / 16)


@pytest.mark.filterwarnings("ignore:Skipping nested container")  # Keras says it per layer before we refuse.
def test_weights_of_another_width_fail_clearly(backbone):
  with pytest.raises(ValueError, match=r"alpha=0\.35"):
    network.build_deeplabv3plus(alpha=0.35, backbone_weights=str(backbone.weights))


def test_garbage_or_missing_weights_fail_clearly(tmp_path):
  garbage = tmp_path / "garbage.weights.h5"
  garbage.write_bytes(b"not an HDF5 file" * 100)
  with pytest.raises(ValueError, match="not a usable weights file"):
    network.build_deeplabv3plus(**SMALL, backbone_weights=str(garbage))
  with pytest.raises(FileNotFoundError, match="missing.weights.h5"):
    network.build_deeplabv3plus(**SMALL, backbone_weights=str(tmp_path / "missing.weights.h5"))


@pytest.mark.timeout(120)
def test_keras_imagenet_download_loads_or_says_what_to_do():
  """Offline (as here and in CI) "imagenet" must fail with advice; with internet it must load Keras's weights."""
  try:
    model = network.build_deeplabv3plus(**SMALL, aspp_rates=(), backbone_weights="imagenet")
  except RuntimeError as error:
    assert "internet" in str(error) and "backbone_weights=<path" in str(error)
    return
  reference = keras.applications.MobileNetV2(alpha=0.35, include_top=False, weights="imagenet")
  np.testing.assert_array_equal(
    model.get_layer("block_5_expand").get_weights()[0], reference.get_layer("block_5_expand").get_weights()[0]
  )


def _fit_two_batches(model, seed=0):
  rng = np.random.default_rng(seed)
  images = _images(4, 48, 48, seed)
  labels = rng.integers(0, model.output_shape[-1], (4, 48, 48))
  model.compile(optimizer=keras.optimizers.SGD(0.01), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  return model.fit(images, labels, batch_size=2, epochs=1, verbose=0).history["loss"][-1]


@pytest.mark.parametrize("policy, compute_dtype", [("mixed_float16", "float16"), ("mixed_bfloat16", "bfloat16")])
def test_mixed_precision_builds_runs_and_trains(restore_policy, policy, compute_dtype):
  keras.mixed_precision.set_global_policy(policy)
  model = network.build_deeplabv3plus(**SMALL, aspp_rates=(6, 12, 18), num_classes=4)
  assert model.get_layer("block_3_depthwise").compute_dtype == compute_dtype
  assert model.get_layer("block_3_depthwise_BN").compute_dtype == compute_dtype
  assert model.get_layer("logits").compute_dtype == "float32"
  logits = model(_images(2, 50, 42), training=False)
  assert logits.dtype == tf.float32 and logits.shape == (2, 50, 42, 4)
  assert np.isfinite(logits.numpy()).all()
  assert np.isfinite(_fit_two_batches(model))


def _moving_stats(layer):
  return [layer.moving_mean.numpy().copy(), layer.moving_variance.numpy().copy()]


@pytest.mark.parametrize("freeze", [True, False])
def test_freeze_backbone_bn(freeze):
  model = network.build_deeplabv3plus(**SMALL, aspp_rates=(), num_classes=3, freeze_backbone_bn=freeze, bn_momentum=0.8)
  backbone_names = {
    layer.name
    for layer in keras.applications.MobileNetV2(
      input_shape=(32, 32, 3), alpha=0.35, include_top=False, weights=None
    ).layers
  }
  backbone_bn = [
    layer
    for layer in model.layers
    if isinstance(layer, keras.layers.BatchNormalization) and layer.name in backbone_names
  ]
  head_bn = [
    layer
    for layer in model.layers
    if isinstance(layer, keras.layers.BatchNormalization) and layer.name not in backbone_names
  ]
  assert len(backbone_bn) == 51 and len(head_bn) == 8
  assert all(layer.momentum == 0.8 for layer in backbone_bn + head_bn)
  assert all(layer.trainable != freeze for layer in backbone_bn)
  assert all(layer.trainable for layer in head_bn)
  before = {layer.name: _moving_stats(layer) for layer in backbone_bn + head_bn}
  kernel_before = model.get_layer("Conv1").kernel.numpy().copy()
  _fit_two_batches(model)

  def changed(layer):
    return any(not np.allclose(old, new) for old, new in zip(before[layer.name], _moving_stats(layer), strict=True))

  assert all(changed(layer) != freeze for layer in backbone_bn)
  assert all(changed(layer) for layer in head_bn)
  # Frozen batch norm still passes gradients: the backbone's convolutions learn either way. (Conv1: with
  # random weights and frozen identity BN, deep ReLU6 layers saturate and pass almost no gradient.)
  assert not np.allclose(kernel_before, model.get_layer("Conv1").kernel.numpy())


@pytest.mark.parametrize("mode", ["training", "inference", "frozen"])
def test_fused_batch_norm_matches_keras_batch_norm(mode):
  """Same outputs, input gradients and moving statistics as keras.layers.BatchNormalization."""
  rng = np.random.default_rng(0)
  x = tf.constant(rng.normal(2.0, 3.0, (4, 8, 8, 5)).astype(np.float32))
  weights = [rng.uniform(0.5, 2, 5).astype(np.float32) for _ in range(4)]  # gamma, beta, mean, variance
  results = []
  for cls in (mobilenet_v2.FusedBatchNormalization, keras.layers.BatchNormalization):
    layer = cls(momentum=0.7, epsilon=1e-3)
    layer.build(x.shape)
    layer.set_weights(weights)
    layer.trainable = mode != "frozen"
    with tf.GradientTape() as tape:
      tape.watch(x)
      y = layer(x, training=mode != "inference")
      loss = tf.reduce_sum(y * tf.range(1, 6, dtype=tf.float32) * x)
    results.append((y, tape.gradient(loss, x), _moving_stats(layer)))
  (y, dx, (mean, variance)), (expected_y, expected_dx, (expected_mean, expected_variance)) = results
  # One layer, two kernels (FusedBatchNormV3 against Keras's moments and arithmetic): statistics of 256 values
  # round to ~eps sqrt(256) = 1e-6, outputs and input gradients of size ~5 to ~1e-5; 1e-4 (1e-5 for the
  # statistics) is 10x that, where a wrong momentum or a missed bias correction moves the statistics by 1e-2.
  np.testing.assert_allclose(y, expected_y, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(dx, expected_dx, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(mean, expected_mean, rtol=1e-5)
  if mode == "training":  # The fused kernel's running variance takes the unbiased batch variance, Keras's not.
    n = x.shape[0] * x.shape[1] * x.shape[2]
    expected_variance = expected_variance + 0.3 * np.var(x.numpy(), axis=(0, 1, 2)) / (n - 1)
    assert not np.allclose(variance, weights[3])
  else:
    np.testing.assert_array_equal(variance, weights[3])
  np.testing.assert_allclose(variance, expected_variance, rtol=1e-5)


def test_count_flops_counts_convolutions():
  conv = keras.Sequential([keras.Input((None, None, 3)), keras.layers.Conv2D(8, 3, padding="same", use_bias=False)])
  assert flops.count_flops(conv, 10, 12) == 2 * 10 * 12 * 8 * 3 * 3 * 3
  # Ours: the profiler's count is the convolutions' multiply-adds plus a little elementwise work.
  model = network.build_deeplabv3plus(**SMALL, input_shape=(128, 96, 3), aspp_rates=(6, 12, 18))
  conv_flops = 0
  for layer in model.layers:
    if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)):
      _, height, width, channels = layer.output.shape
      fan_in = np.prod(layer.kernel.shape[:-1]) if isinstance(layer, keras.layers.Conv2D) else 9
      conv_flops += 2 * height * width * channels * fan_in
  total = flops.count_flops(model, 128, 96)
  assert conv_flops <= total <= 1.1 * conv_flops


def test_saved_model_file_round_trip(tmp_path):
  """The same model back; the training crop the trainer gave it (augment.crop_on_device) is not part of it."""
  model = network.build_deeplabv3plus(**SMALL, aspp_rates=(6,), num_classes=4)
  augment.crop_on_device(model, (33, 33))
  model.save(tmp_path / "model.keras")
  restored = keras.models.load_model(tmp_path / "model.keras")
  assert isinstance(restored, network.SegmentationModel) and restored.prepare_training_batch is None
  assert "train_crop_size" not in restored.get_config()
  images = _images(1, 37, 45)
  # The same weights (restored bit for bit) through the same kernels: equal; 1e-5 only allows for float32 rounding.
  np.testing.assert_allclose(restored(images), model(images), rtol=1e-5, atol=1e-5)
  assert restored.get_layer("bn_Conv1").trainable is False
