"""The train and eval steps compiled by XLA, as TPUs (always) and GPUs (jit_compile) run them, proven on the CPU,
where XLA compiles the same graph; and the TPU settings (steps per execution, fixed batch shapes) run under the
default strategy standing in for a TPUStrategy."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from contracts import voc
from configs import smoke
from tests.conftest import convert_generated_voc
from trainer import config_validation
from trainer import augment
from trainer import input_pipeline
from trainer import metrics as metrics_lib
from trainer import model as model_lib
from trainer import runs
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
  """A training batch as the input pipeline gives it: ({"image": uint8 canvases, "geometry": g}, labels with
  void)."""
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (2, canvas, canvas, 3)).astype(np.uint8)
  labels = rng.integers(0, NUM_CLASSES, (2, canvas, canvas)).astype(np.uint8)
  labels[:, :5] = voc.IGNORE_LABEL
  sizes = tf.constant([[canvas, canvas], [canvas - 10, canvas - 20]])
  geometry = augment.draw_geometry(sizes, sizes, tf.constant([seed, 1], tf.int64), crop=(CROP, CROP),
                                   min_scale=0.5, max_scale=2.0, flip=True)
  return {"image": images, "geometry": geometry.numpy()}, labels


def _first_step(config, jit_compile: bool) -> tuple[float, np.ndarray, keras.Model]:
  """(loss, weight update, model) of one training step from the seed's initial weights."""
  keras.utils.set_random_seed(0)  # The same initial weights for both compilations.
  model = runs.create_model(config)
  train.compile_model(model, config, total_steps=10,
                      execution=train.Execution(jit_compile, steps_per_execution=1, fixed_batch_shapes=False))
  before = np.concatenate([np.ravel(w) for w in model.get_weights()])
  history = model.fit(tf.data.Dataset.from_tensors(_batch()), epochs=1, steps_per_epoch=1, verbose=0)
  update = np.concatenate([np.ravel(w) for w in model.get_weights()]) - before
  return history.history["loss"][0], update, model


@pytest.mark.parametrize("policy, loss_fields, model_fields", [
    ("float32", {"class_weights": (1.0, 2.0, 0.5, 1.0, 3.0)}, {"decoder": False}),
    ("float32", {"top_k_percent_pixels": 0.25},
     {"residual_decoder": True, "align_corners": True, "aspp_rates": (2, 4), "freeze_backbone_bn": True}),
    ("mixed_float16", {"top_k_percent_pixels": 0.5}, {}),
    ("mixed_bfloat16", {"class_weights": (1.0, 2.0, 0.5, 1.0, 3.0)}, {"freeze_backbone_bn": True}),
], ids=["float32-class-weights-deeplabv3-bn-training", "float32-top-k-residual-decoder-aspp-bn-frozen",
        "float16-top-k-decoder-bn-training", "bfloat16-class-weights-decoder-bn-frozen"])
def test_xla_train_step_compiles_and_matches_the_default_step(restore_policy, monkeypatch, policy, loss_fields,
                                                             model_fields):
  # The ASPP's dropout draws other masks under XLA (its own random-number algorithm): off for the comparison.
  monkeypatch.setattr(model_lib, "ASPP_DROPOUT", 0.0)
  keras.mixed_precision.set_global_policy(policy)
  config = _config(**model_fields)
  config.loss.update(loss_fields)
  xla_loss, xla_update, xla_model = _first_step(config, jit_compile=True)
  default_loss, default_update, default_model = _first_step(config, jit_compile=False)
  assert xla_model.jit_compile is True and default_model.jit_compile is False
  assert np.isfinite(xla_loss) and np.isfinite(xla_update).all()
  # bfloat16 keeps 8 bits of mantissa: the two compilations round differently along the way (a zero or
  # wrong-signed update would still be 1 or more).
  loss_tolerance, update_tolerance = {"float32": (1e-4, 1e-2), "mixed_float16": (2e-2, 0.2),
                                      "mixed_bfloat16": (2e-2, 0.5)}[policy]
  assert xla_loss == pytest.approx(default_loss, rel=loss_tolerance)
  # The same update of the weights and batch-norm statistics (relative to its size).
  assert np.linalg.norm(default_update) > 0
  difference = np.linalg.norm(xla_update - default_update) / np.linalg.norm(default_update)
  assert difference <= update_tolerance


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
  np.testing.assert_array_equal(matrices[True], matrices[False])
  np.testing.assert_array_equal(matrices[True], metrics_lib.count_confusion(labels, logits.argmax(-1), NUM_CLASSES))

  config = _config()
  keras.utils.set_random_seed(0)
  model = runs.create_model(config)
  execution = train.Execution(True, steps_per_execution=1, fixed_batch_shapes=True)
  miou = train.compile_model(model, config, total_steps=1, execution=execution)
  images = rng.integers(0, 256, (3, 40, 40, 3)).astype(np.float32)
  model.evaluate(tf.data.Dataset.from_tensors((images, labels)), verbose=0)
  expected = metrics_lib.count_confusion(labels, model.predict(images, verbose=0).argmax(-1), NUM_CLASSES)
  confusion = miou.confusion_matrix()
  assert confusion.sum() == (labels != voc.IGNORE_LABEL).sum()
  assert np.trace(np.minimum(confusion, expected)) >= 0.99 * np.trace(expected)  # Float rounding may flip ties.


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> str:
  """Generated VOC-format pairs converted by the real Beam job: 8 train, 7 val (an odd count), 96x128."""
  return convert_generated_voc(tmp_path_factory, num_train=8, num_val=7, height=96, width=128)


@pytest.mark.parametrize("replicas", [1, 2])
def test_fixed_shape_eval_batches_are_full_and_score_every_image_once(records, replicas):
  files = f"{records}/val-*.tfrecord"
  batches = list(input_pipeline.eval_dataset(files, batch_size=3, pad_to=128, fixed_shape_replicas=replicas))
  assert all(tuple(image.shape) == (3, 128, 128, 3) and tuple(label.shape) == (3, 128, 128)
             for image, label in batches)
  assert len(batches) % replicas == 0 and len(batches) == -(-7 // (3 * replicas)) * replicas
  plain = list(input_pipeline.eval_dataset(files, batch_size=1, pad_to=128))
  labels = np.concatenate([label.numpy() for _, label in batches])
  np.testing.assert_array_equal(labels[:7], np.concatenate([label.numpy() for _, label in plain]))
  assert (labels[7:] == voc.IGNORE_LABEL).all()  # The filling is never scored.


@pytest.mark.parametrize("batch_size, replicas", [(7, 1), (2, 2), (1, 3)])  # 7: exactly one full batch.
def test_fixed_shape_eval_batches_are_the_same_in_number_on_every_input_pipeline(records, batch_size, replicas):
  files = f"{records}/val-*.tfrecord"
  pipelines = [list(input_pipeline.eval_dataset(
      files, batch_size=batch_size, pad_to=128, fixed_shape_replicas=replicas,
      input_context=tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=i,
                                               num_replicas_in_sync=2 * replicas))) for i in range(2)]
  assert len(pipelines[0]) == len(pipelines[1]) and len(pipelines[0]) % replicas == 0
  assert all(tuple(label.shape) == (batch_size, 128, 128) for batches in pipelines for _, label in batches)
  scored = sorted(int((label.numpy() != voc.IGNORE_LABEL).sum())
                  for batches in pipelines for _, labels in batches for label in labels if
                  (label.numpy() != voc.IGNORE_LABEL).any())
  plain = sorted(int((label.numpy() != voc.IGNORE_LABEL).sum())
                 for _, label in input_pipeline.eval_dataset(files, batch_size=1, pad_to=128))
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
  report = train.train_and_evaluate(config, data_dir=records, model_dir=str(tmp_path),
                                    strategy=tf.distribute.get_strategy(), tpu=True)
  assert "execution: jit_compile=True, 4 steps per execution, fixed batch shapes" in absl_messages
  assert report["steps"] == 4 and np.isfinite(report["loss"])
  valid = sum(int((label.numpy() != voc.IGNORE_LABEL).sum())
              for _, label in input_pipeline.eval_dataset(f"{records}/val-*.tfrecord"))
  assert report["valid_pixels"] == valid


@pytest.mark.parametrize("fields, tpu, message", [
    ({"jit_compile": "yes"}, False, "config.train.jit_compile='yes': use auto, True or False"),
    ({"jit_compile": 1}, False, "config.train.jit_compile=1: use auto, True or False"),
    ({"jit_compile": False}, True, "TPUs run only XLA-compiled steps"),
    ({"steps_per_execution": 3}, False, "config.train.steps_per_execution=3: must divide the 10 steps"),
    ({"steps_per_execution": -1}, False, "config.train.steps_per_execution=-1"),
    ({"steps_per_execution": 5, "eval_steps": 3}, False, "config.train.eval_steps=3: must be a multiple of"),
])
def test_bad_execution_settings_are_refused(fields, tpu, message):
  config = _config()
  config.train.update(fields)
  with pytest.raises(config_validation.ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
    train.plan_execution(config, tf.distribute.get_strategy(), steps_per_loop=10, tpu=tpu)


@pytest.mark.parametrize("steps_per_loop, tpu, expected", [(10, False, 1), (10, True, 10), (300, True, 100),
                                                           (97, True, 97), (202, True, 2)])
def test_steps_per_execution_by_default(steps_per_loop, tpu, expected):
  execution = train.plan_execution(_config(), tf.distribute.get_strategy(), steps_per_loop, tpu=tpu)
  assert execution.steps_per_execution == expected
  assert execution.jit_compile == (True if tpu else "auto") and execution.fixed_batch_shapes == tpu
