"""The one place the trainer uses a private part of Keras (3.15), because no public API does the job.

fit() under a tf.distribute strategy first builds the model's loss, metrics and optimizer by tracing the model on
the first batch it takes from the data (Model._maybe_symbolic_build -> Model._symbolic_build). Our training batches
are not what the model takes: canvases and their geometry (trainer/augment.Canvases), which the train step crops
first. Under MultiWorkerMirroredStrategy that build also all-reduces the first batch, which fails. Keras has no
public way to build the compiled loss and metrics without calling the model, nor to skip that first-batch build:
`build_for_fit` does it on a crop-shaped batch of zeros and turns fit()'s own build off for this model.

tests/test_keras_internals.py fails when a Keras release changes what this relies on.
"""

import keras
import tensorflow as tf


def build_for_fit(model: keras.Model, strategy: tf.distribute.Strategy, batch_size: int, crop: tuple[int, int]) -> None:
  """Builds `model`'s compiled loss, metrics and optimizer in `strategy`'s scope on (images [batch_size, *crop, 3],
  labels [batch_size, *crop]) of zeros; fit() then builds nothing from its first batch."""
  with strategy.scope():
    model._symbolic_build(
      data_batch=(
        tf.zeros([batch_size, *crop, 3]),  # Private: no public API gives this.
        tf.zeros([batch_size, *crop], tf.int32),
      )
    )
  model._maybe_symbolic_build = lambda iterator=None, data_batch=None: None  # Private: no public API gives this.
