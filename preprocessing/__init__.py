"""Stage 1 of the journey: raw VOC-format data -> verified, sharded TFRecords (the Beam job: make_tfrecords runs
conversion.py, whose transforms are pipeline.py). Only conversion and pipeline import Beam (make_tfrecords through
conversion); the rest (sources, mask_encoding, pairs, download, synthetic_voc) import none."""

from contracts import quiet_imports as _quiet_imports

_quiet_imports.import_quietly()
