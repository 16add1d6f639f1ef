"""The agreements between the stages, in one place that every stage imports.

  voc         VOC's labels, names, palette and folder layout; label PNGs; split lists
  schema      the TFRecord schema (research/deeplab's), and which image formats a record may hold
  shards      what a conversion leaves beside its shards: shard, rejection, summary and class-name files
  run_dir     a training run's folder: config, weights, metrics, resume checkpoints, evaluation reports
  errors      UserError, the base of every error a user fixes, which every command line catches
  console     how programs report: one-line errors with exit code 2, progress lines
  download    resumable, verified downloads and safe archive extraction (VOC's, published models')
  quiet_imports  TensorFlow (and Beam) imported without their start-up noise

Imports no Keras model code and no Beam; `console`, `errors`, `download` and this package import nothing but absl
and the standard library, so the launchers load them without TensorFlow.
"""
