"""The TFRecord schema shared by every stage: the one of tensorflow/models research/deeplab.

Records written here are read by our trainer, by research/deeplab and by official/vision's segmentation
decoder; the reader below also parses records written by the original DeepLab code.
"""

from contracts import quiet_imports

quiet_imports.import_quietly()
import tensorflow as tf  # noqa: E402

# Formats a record's image may be in (what tf.io.decode_image / decode_jpeg decode), by their files' first bytes;
# others are recognised only to name them instead of calling them corrupt.
IMAGE_SIGNATURES = ((b"\xff\xd8\xff", "jpeg"), (b"\x89PNG\r\n\x1a\n", "png"))
OTHER_IMAGE_SIGNATURES = (
  (b"GIF87a", "gif"),
  (b"GIF89a", "gif"),
  (b"BM", "bmp"),
  (b"II*\x00", "tiff"),
  (b"MM\x00*", "tiff"),
  (b"RIFF", "webp/riff"),
)


def image_format(data: bytes) -> str | None:
  """ "jpeg" or "png" by the file's signature, else None."""
  return next((name for magic, name in IMAGE_SIGNATURES if data.startswith(magic)), None)


def other_image_format(data: bytes) -> str | None:
  """The name of an image format records do not hold (gif, bmp, tiff, webp), by its signature; else None."""
  return next((name for magic, name in OTHER_IMAGE_SIGNATURES if data.startswith(magic)), None)


IMAGE_ENCODED = "image/encoded"
IMAGE_FILENAME = "image/filename"
IMAGE_FORMAT = "image/format"
IMAGE_HEIGHT = "image/height"
IMAGE_WIDTH = "image/width"
IMAGE_CHANNELS = "image/channels"
MASK_ENCODED = "image/segmentation/class/encoded"
MASK_FORMAT = "image/segmentation/class/format"


def _bytes(value: bytes) -> tf.train.Feature:
  return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int64(value: int) -> tf.train.Feature:
  return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))


def make_example(
  *, image: bytes, image_format: str, mask_png: bytes, filename: str, height: int, width: int, channels: int = 3
) -> tf.train.Example:
  """One image/mask pair. `image` is the source file's bytes, stored as is; `mask_png` holds class ids."""
  return tf.train.Example(
    features=tf.train.Features(
      feature={
        IMAGE_ENCODED: _bytes(image),
        IMAGE_FILENAME: _bytes(filename.encode()),
        IMAGE_FORMAT: _bytes(image_format.encode()),
        IMAGE_HEIGHT: _int64(height),
        IMAGE_WIDTH: _int64(width),
        IMAGE_CHANNELS: _int64(channels),
        MASK_ENCODED: _bytes(mask_png),
        MASK_FORMAT: _bytes(b"png"),
      }
    )
  )


FEATURES = {
  IMAGE_ENCODED: tf.io.FixedLenFeature((), tf.string),
  IMAGE_FILENAME: tf.io.FixedLenFeature((), tf.string, default_value=""),
  IMAGE_FORMAT: tf.io.FixedLenFeature((), tf.string, default_value="jpeg"),
  IMAGE_HEIGHT: tf.io.FixedLenFeature((), tf.int64, default_value=0),
  IMAGE_WIDTH: tf.io.FixedLenFeature((), tf.int64, default_value=0),
  IMAGE_CHANNELS: tf.io.FixedLenFeature((), tf.int64, default_value=3),
  MASK_ENCODED: tf.io.FixedLenFeature((), tf.string, default_value=""),
  MASK_FORMAT: tf.io.FixedLenFeature((), tf.string, default_value="png"),
}


def parse_example(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
  """Parses serialized records (scalar or batch) into the FEATURES dict; works in tf.data graphs."""
  return (
    tf.io.parse_single_example(serialized, FEATURES)
    if serialized.shape.rank == 0
    else tf.io.parse_example(serialized, FEATURES)
  )
