"""The CamVid recipe of configs/camvid_from_published.py from ImageNet weights instead, for comparison.

  python -m trainer.main --config=configs/camvid_from_imagenet.py --data_dir=data/camvid \
      --model_dir=runs/camvid_from_imagenet \
      --config.model.backbone_weights=../shared/weights/mobilenet_v2_1.0_imagenet_no_top.weights.h5
  python -m inference.evaluate --model_dir=runs/camvid_from_imagenet --data_dir=data/camvid --scales=1.0,1.5,2.0 --flip
"""

from configs import camvid_from_published


def get_config():
  config = camvid_from_published.get_config()
  config.model.init_from = ""
  config.model.backbone_weights = "imagenet"  # Keras's download, or a local no-top .weights.h5 file.
  config.model.align_corners = False
  config.input.crop_size = (192, 256)
  return config
