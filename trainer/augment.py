"""Training augmentation, all of it: the random draws, the colour jitter and the random scale, pad, crop and flip.

The input pipeline (trainer/input_pipeline.py) runs on the host CPU, which is what starves an accelerator: there
it only decodes each image into a fixed canvas, jitters its colours (`photometric`, optional) and draws each
batch's geometry (`draw_geometry`). The resampling itself, a bilinear resize of every pixel of the crop, happens
here, batched, on the device that trains (`scale_crop_flip`, which `crop_on_device` gives the model's train step:
deeplab/network.SegmentationModel). On the host it cost more CPU than decoding (benchmarks/input_throughput.py);
on a GPU or TPU it is a few gathers per batch.

Random draws: every one is a stateless function of (seed, input pipeline, batch or record index): `pipeline_seeds`
splits a run's seed per input pipeline, `photometric_seed` and `geometry_seed` fold an index in.

Semantics are research/deeplab's (input_preprocess): scale the whole image by s ~ U[min_scale, max_scale] to
floor(H*s) x floor(W*s) (image bilinear, label nearest neighbour, TF's half-pixel convention), pad bottom/right
to at least the crop (image with the mean pixel, label with 255 = ignore), crop at a uniform random offset, flip
left-right with p = 0.5. Each output pixel is computed straight from the source canvas: nothing is resized that
the crop does not keep. Only gathers and arithmetic: it compiles with XLA (TPUs) and runs on CPUs as well.
"""

from typing import NamedTuple

import tensorflow as tf

from contracts import voc
from deeplab import pixels

# Photometric jitter, mild (and clipped to [0, 255]): brightness in pixel units, hue as a fraction of the circle.
BRIGHTNESS_DELTA = 32.0
CONTRAST_RANGE = (0.8, 1.25)
SATURATION_RANGE = (0.8, 1.25)
HUE_DELTA = 0.04


class Geometry(NamedTuple):
  """A batch's random geometry, one row per element (int32 [B, 2] sizes and offsets, bool [B] flips)."""

  canvas_size: tf.Tensor  # the picture's (height, width) on its canvas (its source size, unless shrunk to fit)
  scaled_size: tf.Tensor  # floor(source size * scale)
  offset: tf.Tensor  # the crop's top-left corner (y, x) in the scaled, padded image
  flip: tf.Tensor  # flipped left-right after cropping


class Canvases(NamedTuple):
  """A training batch's images before the train step crops them: uint8 canvases [B, C, C', 3] and their
  Geometry (tfrecords.Batch(Canvases(...), labels) is what trainer/input_pipeline.train_dataset yields)."""

  images: tf.Tensor
  geometry: Geometry


class PipelineSeeds(NamedTuple):
  """One input pipeline's seeds ([2] int64 each), from which every record's and batch's draw is folded."""

  photometric: tf.Tensor
  geometry: tf.Tensor


def pipeline_seeds(seed: int, pipeline_id: int) -> PipelineSeeds:
  """The seeds of input pipeline `pipeline_id` of a run seeded with `seed`."""
  return PipelineSeeds(
    *tf.unstack(tf.random.experimental.stateless_split(tf.constant([seed, pipeline_id], tf.int64), 2))
  )


def photometric_seed(seeds: PipelineSeeds, record_index: tf.Tensor) -> tf.Tensor:
  """The colour jitter's seed of the pipeline's `record_index`-th record."""
  return tf.random.experimental.stateless_fold_in(seeds.photometric, record_index)


def geometry_seed(seeds: PipelineSeeds, batch_index: tf.Tensor) -> tf.Tensor:
  """The geometry's seed of the pipeline's `batch_index`-th batch (one draw per batch: see draw_geometry)."""
  return tf.random.experimental.stateless_fold_in(seeds.geometry, batch_index)


def photometric(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """Mild colour jitter of the uint8 picture (before padding, so that the padding stays at the mean pixel)."""
  seeds = tf.random.experimental.stateless_split(seed, 4)
  image = tf.cast(image, tf.float32)
  image = tf.image.stateless_random_brightness(image, BRIGHTNESS_DELTA, seeds[0])
  image = tf.image.stateless_random_contrast(image, *CONTRAST_RANGE, seeds[1])
  image = tf.image.stateless_random_saturation(image, *SATURATION_RANGE, seeds[2])
  image = tf.image.stateless_random_hue(image, HUE_DELTA, seeds[3])
  return tf.cast(tf.clip_by_value(image, 0.0, 255.0) + 0.5, tf.uint8)


def draw_geometry(
  source_sizes: tf.Tensor,
  canvas_sizes: tf.Tensor,
  seed: tf.Tensor,
  *,
  crop: tuple[int, int],
  min_scale: float,
  max_scale: float,
  flip: bool,
) -> Geometry:
  """The Geometry of a batch of images: a stateless function of `seed` ([2] int).

  source_sizes: int32 [B, 2], each image's own (height, width); canvas_sizes: [B, 2], its size on the canvas
  (smaller when the input pipeline shrank it to fit), which the scale is applied from. One draw per batch, not
  per image: on the host the per-image ops cost measurably more (benchmarks/input_throughput.py).
  """
  u = tf.random.stateless_uniform([tf.shape(source_sizes)[0], 4], seed=seed)
  scale = min_scale + u[:, 0:1] * (max_scale - min_scale)
  scaled = tf.maximum(tf.cast(tf.cast(source_sizes, tf.float32) * scale, tf.int32), 1)
  room = tf.maximum(scaled, crop) - tf.constant(crop, tf.int32)  # Padded to the crop, then cropped.
  offset = tf.minimum(tf.cast(u[:, 1:3] * tf.cast(room + 1, tf.float32), tf.int32), room)
  return Geometry(
    canvas_size=tf.cast(canvas_sizes, tf.int32),
    scaled_size=scaled,
    offset=offset,
    flip=tf.logical_and(flip, u[:, 3] < 0.5),
  )


def _axis_taps(positions: tf.Tensor, canvas_length: tf.Tensor, scaled_length: tf.Tensor):
  """For output positions [B, n] in the scaled image: bilinear taps (i0, i1, weight of i1), the nearest-neighbour
  index, and whether the position is inside the scaled image (not padding), as TF's half-pixel resize computes
  them (tf.image.resize; ResizeBilinear / ResizeNearestNeighbor with half_pixel_centers)."""
  ratio = (canvas_length / scaled_length)[:, tf.newaxis]
  last = (canvas_length - 1.0)[:, tf.newaxis]
  source = (positions + 0.5) * ratio - 0.5
  lower = tf.floor(source)
  i0 = tf.cast(tf.clip_by_value(lower, 0.0, last), tf.int32)
  i1 = tf.cast(tf.clip_by_value(lower + 1.0, 0.0, last), tf.int32)
  nearest = tf.cast(tf.minimum(tf.floor((positions + 0.5) * ratio), last), tf.int32)
  inside = positions < scaled_length[:, tf.newaxis]
  return i0, i1, source - lower, nearest, inside


def scale_crop_flip(
  images: tf.Tensor, labels: tf.Tensor, geometry: Geometry, crop: tuple[int, int] | None = None
) -> tuple[tf.Tensor, tf.Tensor]:
  """Canvases (uint8 images [B, C, C', 3], labels [B, C, C']) + their Geometry -> crops: float32
  images [B, crop_h, crop_w, 3] (raw pixel values, padding pixels.MEAN_PIXEL) and labels [B, crop_h, crop_w] of the
  labels' dtype (padding voc.IGNORE_LABEL).

  crop: (crop_h, crop_w), static; by default the canvas's size.
  """
  crop_h, crop_w = crop if crop is not None else (images.shape[1], images.shape[2])
  canvas_size, scaled_size, offset = (tf.cast(v, tf.float32) for v in geometry[:3])
  rows = offset[:, 0, tf.newaxis] + tf.range(crop_h, dtype=tf.float32)
  columns = tf.range(crop_w, dtype=tf.float32)
  flipped = tf.cast(geometry.flip, tf.bool)[:, tf.newaxis]
  columns = offset[:, 1, tf.newaxis] + tf.where(flipped, crop_w - 1.0 - columns, columns)
  y0, y1, wy, ny, inside_y = _axis_taps(rows, canvas_size[:, 0], scaled_size[:, 0])
  x0, x1, wx, nx, inside_x = _axis_taps(columns, canvas_size[:, 1], scaled_size[:, 1])
  inside = tf.logical_and(inside_y[:, :, tf.newaxis], inside_x[:, tf.newaxis, :])

  # Rows first, on the narrow dtype, then columns of the interpolated rows. Gathers of whole rows (axis 1) copy
  # contiguous runs; columns are gathered as rows of the transpose (on CPUs 20% faster than along axis 2).
  def rows_of(index):
    return tf.cast(tf.gather(images, index, axis=1, batch_dims=1), tf.float32)

  top = rows_of(y0)
  blended_rows = tf.transpose(top + (rows_of(y1) - top) * wy[:, :, tf.newaxis, tf.newaxis], [0, 2, 1, 3])
  left = tf.gather(blended_rows, x0, axis=1, batch_dims=1)
  right = tf.gather(blended_rows, x1, axis=1, batch_dims=1)
  image = tf.transpose(left + (right - left) * wx[:, :, tf.newaxis, tf.newaxis], [0, 2, 1, 3])
  image = tf.where(inside[..., tf.newaxis], image, pixels.MEAN_PIXEL)

  label = tf.transpose(tf.gather(labels, ny, axis=1, batch_dims=1), [0, 2, 1])
  label = tf.transpose(tf.gather(label, nx, axis=1, batch_dims=1), [0, 2, 1])
  label = tf.where(inside, label, tf.cast(voc.IGNORE_LABEL, labels.dtype))
  return image, label


def crops_of(crop: tuple[int, int]):
  """A function of a training batch (Canvases, labels) -> (crops, crop labels): what the train step does first
  (crop_on_device), for `dataset.map` on the host (benchmarks, tests)."""
  return lambda canvases, labels: scale_crop_flip(canvases.images, labels, canvases.geometry, crop=crop)


def crop_on_device(model, crop: tuple[int, int]) -> None:
  """Makes `model`'s train step (deeplab/network.SegmentationModel) crop each training batch of Canvases to
  `crop` on the device, before the forward pass. The trainer calls it when it compiles the model: the crop size
  is the run's config's, not the model's (a saved model does not carry it)."""
  height, width = crop  # Also a list, from a config.
  model.prepare_training_batch = crops_of((height, width))
