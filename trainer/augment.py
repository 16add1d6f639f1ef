"""The geometric half of training augmentation: random scale, pad, crop and flip, done on a batch in the train step.

The input pipeline (trainer/input_pipeline.py) runs on the host CPU, which is what starves an accelerator: there
it only decodes each image into a fixed canvas and draws each batch's geometry (`draw_geometry`). The resampling
itself, a bilinear resize of every pixel of the crop, happens here, batched, on the device that trains
(`scale_crop_flip`, called by `model.SegmentationModel.train_step`). On the host it cost more CPU than decoding
(benchmarks/input_throughput.py); on a GPU or TPU it is a few gathers per batch.

Semantics are research/deeplab's (input_preprocess): scale the whole image by s ~ U[min_scale, max_scale] to
floor(H*s) x floor(W*s) (image bilinear, label nearest neighbour, TF's half-pixel convention), pad bottom/right
to at least the crop (image with the mean pixel, label with 255 = ignore), crop at a uniform random offset, flip
left-right with p = 0.5. Each output pixel is computed straight from the source canvas: nothing is resized that
the crop does not keep. Only gathers and arithmetic: it compiles with XLA (TPUs) and runs on CPUs as well.
"""

import tensorflow as tf

from contracts import voc

MEAN_PIXEL = 127.5  # The model normalises x / 127.5 - 1: padding with it is padding with 0.

# A training element's geometry, float32 [GEOMETRY_SIZE] (integers and a 0/1 flag, exact in float32):
CANVAS_HEIGHT, CANVAS_WIDTH = 0, 1  # the picture's size on its canvas (its source size, unless shrunk to fit)
SCALED_HEIGHT, SCALED_WIDTH = 2, 3  # floor(source size * scale)
OFFSET_Y, OFFSET_X = 4, 5           # the crop's top-left corner in the scaled, padded image
FLIP = 6                            # 1.0: flipped left-right after cropping
GEOMETRY_SIZE = 7


def draw_geometry(source_sizes: tf.Tensor, canvas_sizes: tf.Tensor, seed: tf.Tensor, *, crop: tuple[int, int],
                  min_scale: float, max_scale: float, flip: bool) -> tf.Tensor:
  """float32 [B, GEOMETRY_SIZE] for a batch of images: a stateless function of `seed` ([2] int).

  source_sizes: int32 [B, 2], each image's own (height, width); canvas_sizes: [B, 2], its size on the canvas
  (smaller when the input pipeline shrank it to fit), which the scale is applied from. One draw per batch, not
  per image: on the host the per-image ops cost measurably more (benchmarks/input_throughput.py).
  """
  u = tf.random.stateless_uniform([tf.shape(source_sizes)[0], 4], seed=seed)
  scale = min_scale + u[:, 0:1] * (max_scale - min_scale)
  scaled = tf.maximum(tf.cast(tf.cast(source_sizes, tf.float32) * scale, tf.int32), 1)
  room = tf.maximum(scaled, crop) - tf.constant(crop, tf.int32)  # Padded to the crop, then cropped.
  offset = tf.minimum(tf.cast(u[:, 1:3] * tf.cast(room + 1, tf.float32), tf.int32), room)
  flipped = tf.cast(tf.logical_and(flip, u[:, 3:] < 0.5), tf.int32)
  return tf.cast(tf.concat([tf.cast(canvas_sizes, tf.int32), scaled, offset, flipped], 1), tf.float32)


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


def scale_crop_flip(images: tf.Tensor, labels: tf.Tensor, geometry: tf.Tensor,
                    crop: tuple[int, int] | None = None) -> tuple[tf.Tensor, tf.Tensor]:
  """Canvases (uint8 images [B, C, C', 3], labels [B, C, C']) + geometry [B, GEOMETRY_SIZE] -> crops: float32
  images [B, crop_h, crop_w, 3] (raw pixel values, padding MEAN_PIXEL) and labels [B, crop_h, crop_w] of the
  labels' dtype (padding voc.IGNORE_LABEL).

  crop: (crop_h, crop_w), static; by default the canvas's size.
  """
  crop_h, crop_w = crop if crop is not None else (images.shape[1], images.shape[2])
  geometry = tf.cast(geometry, tf.float32)
  rows = geometry[:, OFFSET_Y, tf.newaxis] + tf.range(crop_h, dtype=tf.float32)
  columns = tf.range(crop_w, dtype=tf.float32)
  flipped = geometry[:, FLIP, tf.newaxis] > 0.5
  columns = geometry[:, OFFSET_X, tf.newaxis] + tf.where(flipped, crop_w - 1.0 - columns, columns)
  y0, y1, wy, ny, inside_y = _axis_taps(rows, geometry[:, CANVAS_HEIGHT], geometry[:, SCALED_HEIGHT])
  x0, x1, wx, nx, inside_x = _axis_taps(columns, geometry[:, CANVAS_WIDTH], geometry[:, SCALED_WIDTH])
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
  image = tf.where(inside[..., tf.newaxis], image, MEAN_PIXEL)

  label = tf.transpose(tf.gather(labels, ny, axis=1, batch_dims=1), [0, 2, 1])
  label = tf.transpose(tf.gather(label, nx, axis=1, batch_dims=1), [0, 2, 1])
  label = tf.where(inside, label, tf.cast(voc.IGNORE_LABEL, labels.dtype))
  return image, label


def crops_of(crop: tuple[int, int]):
  """A function of a training batch ({"image", "geometry"}, labels) -> (crops, crop labels): what the train step
  does first, for `dataset.map` on the host (benchmarks, tests)."""
  return lambda features, labels: scale_crop_flip(features["image"], labels, features["geometry"], crop=crop)
