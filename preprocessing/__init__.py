"""Stage 1 of the journey: raw VOC-format data -> verified, sharded TFRecords."""

from preprocessing import tf_setup as _tf_setup

_tf_setup.import_quietly()
