"""The training input pipeline over DeepLab-schema TFRecords: batches of canvases for the train step to crop.

Training yields `tfrecords.Batch(augment.Canvases(images, geometry), labels)`: uint8 canvases, each holding one
decoded picture (colour-jittered when asked), and each picture's random scale, crop and flip, which the train
step applies on the accelerator (trainer/augment.py, where every augmentation and every random draw is). uint8 is a
quarter of the bytes to batch and to send; the model, the loss and the metrics cast.

Reading, decoding, sharding over workers and the evaluation dataset: deeplab/tfrecords.py, which inference shares.
"""

import random

import tensorflow as tf

from contracts import voc
from deeplab import pixels
from deeplab import tfrecords
from trainer import augment

AUTOTUNE = tf.data.AUTOTUNE


# ---------------------------------------------------------------------------------------------------------------
# Decode into a canvas here, with the colour jitter, and draw the geometry; scale, pad, crop and flip in the train
# step (trainer/augment.py, on the accelerator), where the resampling costs next to nothing. Per image, this side
# costs the decoding plus the copy into the batch; see benchmarks/input_throughput.py.
# ---------------------------------------------------------------------------------------------------------------


def _fit_canvas(image: tf.Tensor, label: tf.Tensor, canvas: tuple[int, int]):
  """Images larger than the canvas are shrunk to fit it (image area-averaged, label nearest neighbour): a cost
  paid on the host, only for them. The geometry's scale stays relative to the source size."""
  size = tf.shape(label)
  fits = tf.reduce_all(size <= canvas)

  def shrink():
    factor = tf.reduce_min(tf.constant(canvas, tf.float32) / tf.cast(size, tf.float32))
    new_size = tf.minimum(tf.maximum(tf.cast(tf.cast(size, tf.float32) * factor, tf.int32), 1), canvas)
    small = tf.image.resize(image, new_size, method="area")
    small_label = tf.image.resize(label[..., tf.newaxis], new_size, method="nearest")[..., 0]
    return tf.cast(tf.round(small), tf.uint8), small_label

  return tf.cond(fits, lambda: (image, label), shrink)


def _prepare_record(serialized: tf.Tensor, photometric_seed: tf.Tensor | None, *, canvas: tuple[int, int]):
  """serialized record -> (uint8 image [h, w, 3], uint8 label [h, w], int32 sizes [4]), h, w <= canvas.

  sizes: the source (height, width), then the (height, width) on the canvas, for `augment.draw_geometry`.
  """
  example = tfrecords.decode_record(serialized)  # Its unused outputs (id) are pruned from the traced map function.
  image, label = _fit_canvas(example["image"], example["label"], canvas)
  if photometric_seed is not None:
    image = augment.photometric(image, photometric_seed)
  return image, label, tf.concat([tf.stack([example["height"], example["width"]]), tf.shape(label)], 0)


def train_dataset(
  file_pattern: str,
  *,
  batch_size: int,
  crop_size: int | tuple[int, int] = 513,
  canvas_size: int | tuple[int, int] = 512,
  min_scale: float = 0.5,
  max_scale: float = 2.0,
  flip: bool = True,
  photometric: bool = False,
  shuffle_buffer: int = 512,
  seed: int | None = None,
  deterministic: bool = False,
  input_context: tf.distribute.InputContext | None = None,
  repeat: bool = True,
) -> tf.data.Dataset:
  """Training batches Batch(Canvases(images, geometry), labels) to be scaled, cropped and flipped in the train
  step, forever unless repeat=False.

  images uint8 [batch_size, canvas_h, canvas_w, 3] and labels uint8 [batch_size, canvas_h, canvas_w]: each
  picture at the top-left of its canvas (padding pixels.MEAN_PIXEL_UINT8 and 255), shrunk on the host only if
  larger than the canvas (set canvas_size to your largest image side to avoid that); geometry (augment.Geometry):
  each element's random scale, crop offset and flip for crop_size. `augment.scale_crop_flip(images, labels,
  geometry, crop)` turns a batch into crops; the train step does so (augment.crop_on_device, which the trainer
  gives the model), and `.map(lambda batch: augment.crops_of(crop)(*batch))` of it here gives crops on the host
  (tf.data passes a Batch, a NamedTuple, as one argument).

  `batch_size` is per replica when `input_context` is given (sharding: see the module docstring). Partial
  batches are dropped (static shapes).
  `deterministic=True` with a `seed` yields identical batches run after run (at some cost in speed); otherwise the
  order of elements may vary with thread timing. Every random draw is a stateless function of (seed, input
  pipeline, batch index, place in the batch), so the augmentation never depends on timing.
  """
  crop = tfrecords.size_pair(crop_size, "crop_size")
  canvas = tfrecords.size_pair(canvas_size, "canvas_size")
  if not 0 < min_scale <= max_scale:
    raise ValueError(f"need 0 < min_scale <= max_scale, got {min_scale}, {max_scale}")
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  files = tfrecords.list_files(file_pattern)
  if seed is None:
    seed = random.SystemRandom().randrange(2**31)
  _, pipeline_id = tfrecords.pipeline_position(input_context)

  dataset = tfrecords.serialized_records(
    files, input_context=input_context, shuffle=True, seed=seed, deterministic=deterministic
  )
  if shuffle_buffer > 1:
    dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
  if repeat:
    dataset = dataset.repeat()
  seeds = augment.pipeline_seeds(seed, pipeline_id)

  if photometric:  # Per image, before padding, so that the padding stays at the mean pixel.
    dataset = dataset.enumerate().map(
      lambda index, serialized: _prepare_record(serialized, augment.photometric_seed(seeds, index), canvas=canvas),
      num_parallel_calls=AUTOTUNE,
    )
  else:
    dataset = dataset.map(
      lambda serialized: _prepare_record(serialized, None, canvas=canvas), num_parallel_calls=AUTOTUNE
    )
  # One copy per picture, straight into the padded batch.
  dataset = dataset.padded_batch(
    batch_size,
    padded_shapes=([canvas[0], canvas[1], 3], [canvas[0], canvas[1]], [4]),
    padding_values=(tf.constant(pixels.MEAN_PIXEL_UINT8, tf.uint8), tf.constant(voc.IGNORE_LABEL, tf.uint8), 0),
    drop_remainder=True,
  )

  def draw_geometry(index, batch):
    images, labels, sizes = batch
    geometry = augment.draw_geometry(
      sizes[:, :2],
      sizes[:, 2:],
      augment.geometry_seed(seeds, index),
      crop=crop,
      min_scale=min_scale,
      max_scale=max_scale,
      flip=flip,
    )
    return tfrecords.Batch(augment.Canvases(images, geometry), labels)

  dataset = dataset.enumerate().map(draw_geometry)
  options = tf.data.Options()
  options.deterministic = deterministic
  return dataset.with_options(options).prefetch(AUTOTUNE)
