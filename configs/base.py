"""Every field a run can set, with defaults; the other configs start from here and change what differs.

Not meant to be run by itself (it trains nothing sensible without a data set); see the recipes beside it.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.train_split = "train"
  config.eval_split = "val"

  config.model = ml_collections.ConfigDict()
  config.model.num_classes = 21
  # One name per class, background first. Empty: the names the conversion wrote beside the shards
  # (class_names.txt), else VOC's for 21 classes, else "class_1", "class_2"...
  config.model.class_names = ()
  # One (r, g, b) per class, what pictures draw them in. Empty: the colours the conversion wrote beside the shards
  # (class_colours.txt, from a data set's colour table), else VOC's colour map.
  config.model.class_colours = ()
  config.model.output_stride = 16
  config.model.alpha = 1.0
  config.model.aspp_rates = (6, 12, 18)
  config.model.separable = True
  # "imagenet" (Keras's download), a path to a no-top MobileNetV2 .weights.h5 file, or "" for random init.
  config.model.backbone_weights = "imagenet"
  config.model.freeze_backbone_bn = True
  config.model.bn_momentum = 0.9
  config.model.decoder = True  # False: DeepLabV3 (logits from the ASPP, as Google's mobile VOC models).
  # The decoder adds a correction (zero at start) to the ASPP's logits instead of replacing them: a model
  # fine-tuned from an imported DeepLabV3 starts at its predictions.
  config.model.residual_decoder = False
  config.model.align_corners = False  # True: TF1's corner-aligned bilinear resizes (published DeepLab weights).
  config.model.depth_divisor = 8  # Channel rounding; 1 for research/deeplab's depth-0.5 MobileNetV2.
  # A run directory (or a .weights.h5 inside one) whose layers of the same name and shape start this model;
  # the rest start fresh. E.g. a published model imported by python -m inference.import_model.
  config.model.init_from = ""
  # Which layers train: "all"; "new" (those init_from did not provide); "head" (ASPP, decoder, logits).
  config.model.trainable_layers = "all"

  config.input = ml_collections.ConfigDict()
  config.input.crop_size = 513
  # Each training image travels to the accelerator on a canvas this size, where it is scaled and cropped
  # (trainer/augment.py). Larger images are shrunk to fit on the host first: set it to your largest side.
  config.input.canvas_size = 512  # VOC images are at most 500x500.
  config.input.min_scale = 0.5
  config.input.max_scale = 2.0
  config.input.flip = True
  config.input.photometric = False
  config.input.shuffle_buffer = 512
  config.input.eval_pad_to = 512  # VOC images are at most 500x500; padding is labelled 255, never scored.

  config.batch_size = 16  # Global: split evenly over the replicas.
  config.eval_batch_size = 8

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = "sgd"  # sgd (with momentum) | adam
  config.optimizer.learning_rate = 0.007
  config.optimizer.momentum = 0.9
  config.optimizer.weight_decay = 4e-5  # Decoupled; biases and batch-norm parameters are excluded.
  config.optimizer.schedule = "poly"  # poly | cosine | constant
  config.optimizer.power = 0.9
  config.optimizer.warmup_steps = 0

  config.loss = ml_collections.ConfigDict()
  config.loss.class_weights = ()  # Empty: all 1. Else num_classes weights.
  # Class weights from the training split's pixel counts (its conversion summary), logged and written into the
  # run's config.json as class_weights: "median_frequency" (SegNet's, Eigen & Fergus 2015) or "inverse_log"
  # (ENet's 1 / ln(1.02 + share), smoother); "" for none.
  config.loss.class_weighting = ""
  config.loss.top_k_percent_pixels = 1.0  # < 1.0: hard-pixel mining, the loss of the hardest fraction only.

  config.train = ml_collections.ConfigDict()
  config.train.epochs = 10  # Passes over the training split...
  config.train.steps = 0  # ...unless steps > 0, which fixes the total number of optimizer steps.
  # Steps between checkpoints, validation and epoch-level summaries (a Keras "epoch"); 0 = one data epoch.
  # A killed run resumes from the last of these boundaries with the same total number of steps.
  config.train.steps_per_loop = 0
  config.train.eval_every_loops = 1
  config.train.early_stopping_patience = 0  # In evaluations without a better val mIoU; 0 = off.
  config.train.log_every_steps = 10  # Training scalars (loss, learning rate, images/s) in TensorBoard.
  config.train.num_triptychs = 4  # Validation pictures (image / truth / prediction) in TensorBoard.
  config.train.eval_steps = 0  # 0 = the whole eval split.
  # XLA for the train and eval steps: "auto" (Keras's choice: on a single GPU without a strategy), True or False.
  # TPU runs always compile.
  config.train.jit_compile = ml_collections.FieldReference("auto", field_type=object)
  # Steps per call into the devices; 0: 1, or on TPUs the largest divisor of steps_per_loop up to 100.
  config.train.steps_per_execution = 0
  return config
