"""What trainer/keras_internals.py relies on in Keras's private API: these fail when a Keras release changes it."""

import inspect

import keras
from keras.src.backend.tensorflow import trainer as keras_tf_trainer
import numpy as np
import tensorflow as tf

from contracts import voc
from deeplab import metrics
from deeplab import network
from deeplab import tfrecords
from trainer import augment
from trainer import keras_internals
from trainer import losses

CROP = (33, 33)


def test_fit_builds_through_the_private_methods_that_build_for_fit_replaces():
  """fit() (and evaluate()) build through Model._maybe_symbolic_build on the first batch, which calls
  Model._symbolic_build(data_batch=...): the two names build_for_fit uses."""
  fit = inspect.getsource(keras_tf_trainer.TensorFlowTrainer.fit)
  assert "self._maybe_symbolic_build(iterator=epoch_iterator)" in fit
  assert "data_batch" in inspect.signature(keras.Model._symbolic_build).parameters
  assert set(inspect.signature(keras_tf_trainer.TensorFlowTrainer._maybe_symbolic_build).parameters) == {
    "self",
    "iterator",
    "data_batch",
  }


def _model():
  keras.utils.set_random_seed(0)
  model = network.build_deeplabv3plus(alpha=0.35, aspp_rates=(), num_classes=3)
  model.compile(
    optimizer=keras.optimizers.SGD(0.1),
    loss=losses.SegmentationLoss(3),
    metrics=[metrics.MeanIoU(3), metrics.PixelAccuracy()],
  )
  return model


def test_build_for_fit_builds_loss_metrics_and_optimizer_and_fit_trains_on_canvases():
  """Under a strategy, after build_for_fit, fit() takes batches of canvases (which the model cannot be called on)
  and builds nothing from them."""
  strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
  with strategy.scope():
    model = _model()
  augment.crop_on_device(model, CROP)
  keras_internals.build_for_fit(model, strategy, 2, CROP)
  assert model.optimizer.built
  assert all(metric.variables for metric in model.metrics)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (2, 48, 48, 3)).astype(np.uint8)
  labels = rng.integers(0, 3, (2, 48, 48)).astype(np.uint8)
  labels[:, :4] = voc.IGNORE_LABEL
  sizes = tf.constant([[48, 48], [40, 30]])
  geometry = augment.draw_geometry(
    sizes, sizes, tf.constant([0, 1], tf.int64), crop=CROP, min_scale=0.5, max_scale=2.0, flip=True
  )
  batch = tfrecords.Batch(augment.Canvases(tf.constant(images), geometry), tf.constant(labels))
  history = model.fit(tf.data.Dataset.from_tensors(batch).repeat(), epochs=1, steps_per_epoch=2, verbose=0)
  assert np.isfinite(history.history["loss"][-1])
  assert int(model.optimizer.iterations.numpy()) == 2
