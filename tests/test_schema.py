"""Reader compatibility of the record schema with records written by the original research/deeplab code."""

import numpy as np
import tensorflow as tf

from contracts import schema
from contracts import voc
from preprocessing import pairs
from preprocessing import synthetic_voc


def _feature_kinds(serialized: bytes) -> dict[str, str]:
  example = tf.train.Example.FromString(serialized)
  return {key: feature.WhichOneof("kind") for key, feature in example.features.feature.items()}


def test_deeplab_records_parse_and_decode(deeplab_format_sample):
  records = [r.numpy() for r in tf.data.TFRecordDataset(str(deeplab_format_sample))]
  assert len(records) == 3
  batch = schema.parse_example(tf.constant(records))  # the batched path
  for index, record in enumerate(records):
    features = schema.parse_example(tf.constant(record))  # the scalar path
    assert features[schema.IMAGE_FORMAT].numpy() == b"jpeg"
    assert features[schema.IMAGE_FILENAME].numpy().startswith(b"2007_")
    height, width = int(features[schema.IMAGE_HEIGHT]), int(features[schema.IMAGE_WIDTH])
    assert tf.io.decode_jpeg(features[schema.IMAGE_ENCODED]).shape == (height, width, 3)
    assert tf.io.decode_png(features[schema.MASK_ENCODED]).shape == (height, width, 1)
    assert batch[schema.IMAGE_ENCODED][index].numpy() == features[schema.IMAGE_ENCODED].numpy()


def test_our_records_have_deeplabs_features(deeplab_format_sample, tmp_path):
  image, class_ids = synthetic_voc.make_pair(np.random.default_rng(0), 40, 48)
  (tmp_path / "JPEGImages").mkdir()
  (tmp_path / "SegmentationClass").mkdir()
  (tmp_path / "JPEGImages" / "x.jpg").write_bytes(synthetic_voc.encode_jpeg(image))
  (tmp_path / "SegmentationClass" / "x.png").write_bytes(voc.encode_palette_png(class_ids))
  ours = pairs.convert(str(tmp_path), "x")
  theirs = next(iter(tf.data.TFRecordDataset(str(deeplab_format_sample)))).numpy()
  assert _feature_kinds(ours) == _feature_kinds(theirs)
  assert set(_feature_kinds(ours)) == set(schema.FEATURES)
