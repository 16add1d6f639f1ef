"""Stage 1 of the journey: raw VOC-format data -> verified, sharded TFRecords (the Beam job: make_tfrecords,
pipeline). Only those two modules import Beam; the rest (pairs, download, synthetic_voc) serve other stages too."""

from contracts import quiet_imports as _quiet_imports

_quiet_imports.import_quietly()
