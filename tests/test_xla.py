"""The train and eval steps compiled by XLA, as TPUs (always) and GPUs (jit_compile) run them, proven on the CPU,
where XLA compiles the same graph; and the TPU settings (steps per execution, fixed batch shapes) run under the
default strategy standing in for a TPUStrategy."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from configs import smoke
from contracts import voc
from deeplab import building
from deeplab import metrics as metrics_lib
from deeplab import network
from deeplab import tfrecords
from tests.conftest import FLOAT32_STEP_NOISE
from tests.conftest import clear_pixels
from tests.conftest import convert_generated_voc
from tests.conftest import direction_and_size
from tests.conftest import same_step
from trainer import augment
from trainer import config_validation
from trainer import train

NUM_CLASSES = 5
CROP = 48


@pytest.fixture
def restore_policy():
  yield
  keras.mixed_precision.set_global_policy("float32")


def _config(**model_fields):
  config = smoke.get_config()
  config.model.alpha = 0.35
  config.model.num_classes = NUM_CLASSES
  config.input.crop_size = CROP
  config.batch_size = 2
  config.model.update(model_fields)
  # SGD: an update proportional to the gradient, comparable across the two compilations (Adam's first step
  # is +-learning rate for any gradient, so a near-zero one may flip sign with rounding).
  config.optimizer.name = "sgd"
  config.optimizer.learning_rate = 0.05
  return config


def _batch(seed=0, canvas=64):
  """A training batch as the input pipeline gives it: Batch(Canvases(uint8 canvases, geometry), labels with void)."""
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (2, canvas, canvas, 3)).astype(np.uint8)
  labels = rng.integers(0, NUM_CLASSES, (2, canvas, canvas)).astype(np.uint8)
  labels[:, :5] = voc.IGNORE_LABEL
  sizes = tf.constant([[canvas, canvas], [canvas - 10, canvas - 20]])
  geometry = augment.draw_geometry(
    sizes, sizes, tf.constant([seed, 1], tf.int64), crop=(CROP, CROP), min_scale=0.5, max_scale=2.0, flip=True
  )
  return tfrecords.Batch(augment.Canvases(tf.constant(images), geometry), tf.constant(labels))


# One training step's update is compared in three groups, since they differ by orders of magnitude in size and in
# how rounding affects them: every trainable weight (the gradient through the whole network); the float32 output
# layers' weights (one matrix product from the loss: where class weights and top-k act first); and the batch-norm
# moving statistics (the forward pass alone, no gradient).
TRAINABLE, OUTPUT_LAYERS, MOVING_STATISTICS = "trainable weights", "output layers", "moving statistics"
# Keras's LossScaleOptimizer starts at 2^15, where this step's float16 gradients overflow (2^12 too): both steps
# would be skipped, leaving only the statistics to compare. At 2^8 the step is applied.
FLOAT16_LOSS_SCALE = 2.0**8

# The rounding noise each policy's comparison allows, relative to the size of the update (e in conftest.same_step),
# and the loss's relative tolerance; measured on an AMD EPYC (AVX2, no AVX-512) for scale, and a deliberately
# different step for what must fail (test below).
# float32: conftest.FLOAT32_STEP_NOISE (ReLUs flipped at their kinks by rounding; 0.018 on an Intel Xeon with AMX,
# <= 3e-4 here), while the step without class weights or top-k is at cosine 0.90-0.91, norm ratio 0.30-0.57.
# The loss is a forward pass (ReLU is continuous: a flip at the kink moves nothing): an n-term sum rounds by about
# eps sqrt(n), 2e-6 for the ~1e3-term sums here, ~1e-5 over ~60 layers; 1e-3 is 100x that, against 4e-7-6e-6
# measured and 0.22-0.42 for the wrong loss.
# float16 (11 bits: 2^-11 = 4.9e-4 per rounding) compounds over those layers to 1.9% in the statistics, 0.19% in the
# loss, 9.5% in the output layers with the plain decoder (top-k's cut moves with the rounded losses; 4.4% with the
# residual decoder, 0.04% in its loss): 0.35 is 3.7x that, while top-k ignored halves the output layers' update
# (ratio 0.42-0.49).
# bfloat16 (8 bits: 2^-8 = 3.9e-3 per rounding): 12-17% in the statistics and output layers, 0.24% in the loss; 0.6
# is 3.4x that, while class weights ignored turn the output layers' update to cosine 0.35, ratio 0.32.
NOISE = {"float32": FLOAT32_STEP_NOISE, "mixed_float16": 0.35, "mixed_bfloat16": 0.6}
LOSS_TOLERANCE = {"float32": 1e-3, "mixed_float16": 2e-2, "mixed_bfloat16": 5e-2}


def _set_frozen_statistics(model: keras.Model, batch) -> None:
  """Gives the frozen (inference-mode) batch norms the statistics of other crops, as a pretrained backbone's match
  its inputs. At their initial 0 and 1 a random backbone's activations shrink to ~1e-7: the logits and per-pixel
  losses then differ only in their last bits (top-k picks among float32 near-ties, decided by rounding) and the
  head's ReLUs all sit at their kinks, a degenerate step. The trainable batch norms keep their initial statistics."""
  crops, _ = augment.crops_of((CROP, CROP))(*batch)
  layers = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
  frozen = [layer for layer in layers if not layer.trainable]
  kept = [(layer, layer.get_weights()) for layer in layers if layer.trainable]
  momentum = {layer.name: layer.momentum for layer in frozen}
  for layer in frozen:
    layer.trainable, layer.momentum = True, 0.0  # Training mode, moving statistics := the batch's.
  model(crops, training=True)
  for layer in frozen:
    layer.trainable, layer.momentum = False, momentum[layer.name]
  for layer, weights in kept:
    layer.set_weights(weights)


def _first_step(config, jit_compile: bool) -> tuple[float, dict[str, np.ndarray], keras.Model]:
  """(loss, {group: weight update}, model) of one training step from the seed's initial weights."""
  keras.utils.set_random_seed(0)  # The same initial weights for both compilations.
  model = building.create_model(config)
  if config.model.freeze_backbone_bn:
    _set_frozen_statistics(model, _batch(seed=1))
  train.compile_model(
    model,
    config,
    total_steps=10,
    execution=train.Execution(jit_compile, steps_per_execution=1, fixed_batch_shapes=False),
  )
  if isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer):
    model.optimizer.initial_scale = FLOAT16_LOSS_SCALE  # Read when fit() builds the optimizer.
  groups = {
    TRAINABLE: model.trainable_weights,
    OUTPUT_LAYERS: [
      weight
      for layer in model.layers
      if layer.name in ("logits", "decoder_logits")
      for weight in layer.trainable_weights
    ],
    MOVING_STATISTICS: model.non_trainable_weights,
  }
  before = {group: [weight.numpy().copy() for weight in weights] for group, weights in groups.items()}
  history = model.fit(tf.data.Dataset.from_tensors(_batch()), epochs=1, steps_per_epoch=1, verbose=0)
  updates = {
    group: np.concatenate([np.ravel(weight.numpy() - old) for weight, old in zip(weights, before[group], strict=True)])
    for group, weights in groups.items()
  }
  return history.history["loss"][0], {group: update.astype(np.float64) for group, update in updates.items()}, model


@pytest.mark.parametrize(
  "policy, loss_fields, model_fields",
  [
    # Three cases share the features out between them (each case costs an XLA compilation, ~1 minute on 2 cores).
    ("float32", {"class_weights": (1.0, 2.0, 0.5, 1.0, 3.0)}, {"decoder": False}),
    (
      "mixed_float16",
      {"top_k_percent_pixels": 0.5},
      {"residual_decoder": True, "align_corners": True, "aspp_rates": (2, 4), "freeze_backbone_bn": True},
    ),
    ("mixed_bfloat16", {"class_weights": (1.0, 2.0, 0.5, 1.0, 3.0)}, {"freeze_backbone_bn": True}),
  ],
  ids=[
    "float32-class-weights-deeplabv3-bn-training",
    "float16-top-k-residual-decoder-aspp-bn-frozen",
    "bfloat16-class-weights-decoder-bn-frozen",
  ],
)
def test_xla_train_step_compiles_and_matches_the_default_step(
  restore_policy, monkeypatch, policy, loss_fields, model_fields
):
  # The ASPP's dropout draws other masks under XLA (its own random-number algorithm): off for the comparison.
  monkeypatch.setattr(network, "ASPP_DROPOUT", 0.0)
  keras.mixed_precision.set_global_policy(policy)
  config = _config(**model_fields)
  config.loss.update(loss_fields)
  xla_loss, xla_updates, xla_model = _first_step(config, jit_compile=True)
  default_loss, default_updates, default_model = _first_step(config, jit_compile=False)
  assert xla_model.jit_compile is True and default_model.jit_compile is False
  # A deliberately different step, which each comparison must tell from the default one, so that it can fail: the
  # loss without its class weights or top-k (the gradient), statistics updated at another rate (momentum 0.99).
  wrong_config = _config(**model_fields)
  wrong_config.model.bn_momentum = 0.99
  wrong_loss, wrong_updates, _ = _first_step(wrong_config, jit_compile=False)
  measured = {
    "loss": [f"{abs(loss / default_loss - 1):.2g}" for loss in (xla_loss, wrong_loss)],
    **{
      group: [
        f"cos {c:.6f} ratio {r:.4f}"
        for c, r in (direction_and_size(xla_updates[group], update), direction_and_size(wrong_updates[group], update))
      ]
      for group, update in default_updates.items()
    },
  }  # [XLA, the different step] against the default.
  for updates in (xla_updates, default_updates):
    assert all(np.isfinite(update).all() and np.linalg.norm(update) > 0 for update in updates.values()), measured
  assert xla_loss == pytest.approx(default_loss, rel=LOSS_TOLERANCE[policy]), measured
  assert wrong_loss != pytest.approx(default_loss, rel=LOSS_TOLERANCE[policy]), measured
  # In float16 and bfloat16 the gradient deeper in the network is mostly rounding noise: XLA's and the default
  # step's whole updates were at cosine 0.77 and 0.12 here (the step without class weights or top-k at 0.96 and
  # 0.93), so they are compared where the arithmetic is well conditioned: the output layers and the statistics.
  groups = [OUTPUT_LAYERS, MOVING_STATISTICS] + ([TRAINABLE] if policy == "float32" else [])
  for group in groups:
    assert same_step(xla_updates[group], default_updates[group], NOISE[policy]), (group, measured)
    assert not same_step(wrong_updates[group], default_updates[group], NOISE[policy]), (group, measured)


def test_xla_eval_step_counts_the_same_confusion_matrix():
  """MeanIoU's XLA form (a segment sum: XLA has no Bincount kernel) against its default form, on the same
  logits, inside a compiled function; and a whole compiled evaluation over padded images."""
  rng = np.random.default_rng(1)
  labels = rng.integers(0, NUM_CLASSES, (3, 40, 40)).astype(np.int32)
  labels[:, 30:] = voc.IGNORE_LABEL
  logits = rng.normal(size=(3, 40, 40, NUM_CLASSES)).astype(np.float32)
  matrices = {}
  for xla in (False, True):
    metric = metrics_lib.MeanIoU(NUM_CLASSES, xla_compatible=xla)
    tf.function(metric.update_state, jit_compile=xla)(labels, logits)
    matrices[xla] = metric.confusion_matrix()
  # Exact: both forms count the argmax of the same float32 logits (no arithmetic, and normal draws never tie).
  np.testing.assert_array_equal(matrices[True], matrices[False])
  np.testing.assert_array_equal(matrices[True], metrics_lib.count_confusion(labels, logits.argmax(-1), NUM_CLASSES))

  config = _config()
  keras.utils.set_random_seed(0)
  model = building.create_model(config)
  execution = train.Execution(True, steps_per_execution=1, fixed_batch_shapes=True)
  miou = train.compile_model(model, config, total_steps=1, execution=execution)
  images = rng.integers(0, 256, (3, 40, 40, 3)).astype(np.float32)
  model.evaluate(tf.data.Dataset.from_tensors((images, labels)), verbose=0)
  logits = model.predict(images, verbose=0)
  expected = metrics_lib.count_confusion(labels, logits.argmax(-1), NUM_CLASSES)
  confusion = miou.confusion_matrix()
  assert confusion.sum() == (labels != voc.IGNORE_LABEL).sum()
  # XLA's kernels round otherwise than the default ones: only the pixels whose top two logits tie within rounding
  # (conftest.TIE) may change class, each moving one count from one cell to another.
  tied = int(((labels != voc.IGNORE_LABEL) & ~clear_pixels(logits)).sum())
  assert np.abs(confusion - expected).sum() <= 2 * tied, (np.abs(confusion - expected).sum(), tied)


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> str:
  """Generated VOC-format pairs converted by the real Beam job: 8 train, 7 val (an odd count), 96x128."""
  return convert_generated_voc(tmp_path_factory, num_train=8, num_val=7, height=96, width=128)


@pytest.mark.parametrize("replicas", [1, 2])
def test_fixed_shape_eval_batches_are_full_and_score_every_image_once(records, replicas):
  files = f"{records}/val-*.tfrecord"
  batches = list(tfrecords.eval_dataset(files, batch_size=3, pad_to=128, fixed_shape_replicas=replicas))
  assert all(tuple(image.shape) == (3, 128, 128, 3) and tuple(label.shape) == (3, 128, 128) for image, label in batches)
  assert len(batches) % replicas == 0 and len(batches) == -(-7 // (3 * replicas)) * replicas
  plain = list(tfrecords.eval_dataset(files, batch_size=1, pad_to=128))
  labels = np.concatenate([label.numpy() for _, label in batches])
  np.testing.assert_array_equal(labels[:7], np.concatenate([label.numpy() for _, label in plain]))
  assert (labels[7:] == voc.IGNORE_LABEL).all()  # The filling is never scored.


@pytest.mark.parametrize("batch_size, replicas", [(7, 1), (2, 2), (1, 3)])  # 7: exactly one full batch.
def test_fixed_shape_eval_batches_are_the_same_in_number_on_every_input_pipeline(records, batch_size, replicas):
  files = f"{records}/val-*.tfrecord"
  pipelines = [
    list(
      tfrecords.eval_dataset(
        files,
        batch_size=batch_size,
        pad_to=128,
        fixed_shape_replicas=replicas,
        input_context=tf.distribute.InputContext(
          num_input_pipelines=2, input_pipeline_id=i, num_replicas_in_sync=2 * replicas
        ),
      )
    )
    for i in range(2)
  ]
  assert len(pipelines[0]) == len(pipelines[1]) and len(pipelines[0]) % replicas == 0
  assert all(tuple(label.shape) == (batch_size, 128, 128) for batches in pipelines for _, label in batches)
  scored = sorted(
    int((label.numpy() != voc.IGNORE_LABEL).sum())
    for batches in pipelines
    for _, labels in batches
    for label in labels
    if (label.numpy() != voc.IGNORE_LABEL).any()
  )
  plain = sorted(
    int((label.numpy() != voc.IGNORE_LABEL).sum())
    for _, label in tfrecords.eval_dataset(files, batch_size=1, pad_to=128)
  )
  assert scored == plain  # Every image once, over both pipelines.


def test_tpu_path_trains_and_evaluates_under_the_default_strategy(records, tmp_path, absl_messages):
  """What --strategy=tpu changes, run with the default strategy standing in: XLA steps, several steps per
  execution, fixed batch shapes; every validation pixel is scored once, none of the filling."""
  config = _config()
  config.model.num_classes = 21
  config.input.crop_size = 64
  config.input.eval_pad_to = 128
  config.eval_batch_size = 3
  config.train.steps = 4
  config.train.num_triptychs = 1
  report = train.train_and_evaluate(
    config, data_dir=records, model_dir=str(tmp_path), strategy=tf.distribute.get_strategy(), tpu=True
  )
  assert "execution: jit_compile=True, 4 steps per execution, fixed batch shapes" in absl_messages
  assert report["steps"] == 4 and np.isfinite(report["loss"])
  valid = sum(
    int((label.numpy() != voc.IGNORE_LABEL).sum()) for _, label in tfrecords.eval_dataset(f"{records}/val-*.tfrecord")
  )
  assert report["valid_pixels"] == valid


@pytest.mark.parametrize(
  "fields, tpu, message",
  [
    ({"jit_compile": "yes"}, False, "config.train.jit_compile='yes': use auto, True or False"),
    ({"jit_compile": 1}, False, "config.train.jit_compile=1: use auto, True or False"),
    ({"jit_compile": False}, True, "TPUs run only XLA-compiled steps"),
    ({"steps_per_execution": 3}, False, "config.train.steps_per_execution=3: must divide the 10 steps"),
    ({"steps_per_execution": -1}, False, "config.train.steps_per_execution=-1"),
    ({"steps_per_execution": 5, "eval_steps": 3}, False, "config.train.eval_steps=3: must be a multiple of"),
  ],
)
def test_bad_execution_settings_are_refused(fields, tpu, message):
  config = _config()
  config.train.update(fields)
  with pytest.raises(config_validation.ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
    train.plan_execution(config, tf.distribute.get_strategy(), steps_per_loop=10, tpu=tpu)


@pytest.mark.parametrize(
  "steps_per_loop, tpu, expected", [(10, False, 1), (10, True, 10), (300, True, 100), (97, True, 97), (202, True, 2)]
)
def test_steps_per_execution_by_default(steps_per_loop, tpu, expected):
  execution = train.plan_execution(_config(), tf.distribute.get_strategy(), steps_per_loop, tpu=tpu)
  assert execution.steps_per_execution == expected
  assert execution.jit_compile == (True if tpu else "auto") and execution.fixed_batch_shapes == tpu
