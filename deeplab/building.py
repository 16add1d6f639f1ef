"""The model a config describes (configs/base.py's `model` fields), and the training crop a config asks for.

Training, fine-tuning (config.model.init_from), the import of published models and the rebuilding of a run's
model (run_folder.py) build models through here.
"""

import keras
import ml_collections

from deeplab import network
from deeplab import tfrecords


def crop_size(config: ml_collections.ConfigDict) -> tuple[int, int]:
  """config.input.crop_size as (height, width): the crops the train step cuts from training canvases."""
  return tfrecords.size_pair(config.input.crop_size, "config.input.crop_size")


def create_model(config: ml_collections.ConfigDict) -> keras.Model:
  m = config.model
  return network.build_deeplabv3plus(
    num_classes=m.num_classes,
    output_stride=m.output_stride,
    alpha=m.alpha,
    aspp_rates=tuple(m.aspp_rates),
    separable=m.separable,
    backbone_weights=m.backbone_weights or None,
    freeze_backbone_bn=m.freeze_backbone_bn,
    bn_momentum=m.bn_momentum,
    decoder=m.decoder,
    residual_decoder=m.residual_decoder,
    align_corners=m.align_corners,
    depth_divisor=m.depth_divisor,
  )
