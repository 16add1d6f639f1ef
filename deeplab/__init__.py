"""The model that training and inference share: DeepLabV3+ on MobileNetV2, built from a config or rebuilt from a
run folder, with what both stages read and score with.

  pixels        the preprocessing constants: mean pixel, normalisation, DeepLab's 513 canvas
  network       the Keras model (DeepLabV3+ head, SegmentationModel), on mobilenet_v2 (the encoder)
  flops         forward FLOPs of a model, by TF's profiler
  building      a model from a config (create_model), the training crop of a config
  run_folder    a training run's model rebuilt from its folder (config.json, weights; contracts/run_dir.py)
  tfrecords     reading DeepLab-schema TFRecords: decoding, the evaluation dataset (contracts/schema.py)
  metrics       confusion counting, mIoU and accuracies, Keras's MeanIoU on logits
  visualize     triptychs, overlays, confusion pictures

Imports contracts/ and configs/ only; never trainer/, inference/, preprocessing/ or launch/ (tests/test_layout.py).
"""

from contracts import quiet_imports as _quiet_imports

_quiet_imports.import_quietly()
