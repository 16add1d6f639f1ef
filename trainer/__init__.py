"""Stage 2: TFRecords -> trained, evaluated and exported DeepLabV3+ models."""

from preprocessing import tf_setup as _tf_setup

_tf_setup.import_quietly()
