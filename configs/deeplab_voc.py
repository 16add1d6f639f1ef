"""The DeepLab recipe for VOC train_aug (Chen et al. 2018, MobileNetV2 at output stride 16).

  python -m preprocessing.make_tfrecords --voc_root=data/VOC2012 --output_dir=data/tfrecords \
      --splits=train_aug,val --with_sbd
  python -m trainer.main --config=configs/deeplab_voc.py --data_dir=data/tfrecords \
      --model_dir=runs/deeplab_voc --strategy=mirrored --mixed_precision=mixed_float16
"""

from configs import base


def get_config():
  config = base.get_config()
  config.train_split = "train_aug"
  config.batch_size = 16
  config.input.crop_size = 513
  config.optimizer.update(name="sgd", learning_rate=0.007, momentum=0.9, schedule="poly", power=0.9, warmup_steps=500)
  config.train.steps = 30000
  config.train.steps_per_loop = 1000
  # At batch 16 the batch statistics are trustworthy enough to train the backbone's batch norm.
  config.model.freeze_backbone_bn = False
  config.model.bn_momentum = 0.9997
  return config
