"""Stage 2: sharded TFRecords -> a training run (checkpoints, metrics, TensorBoard). Imports no Beam."""

from contracts import quiet_imports as _quiet_imports

_quiet_imports.import_quietly()
