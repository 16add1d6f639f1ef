"""Fine-tunes from ImageNet weights on a few hundred VOC images on a CPU (the sample in ../shared).

  python -m preprocessing.make_tfrecords --voc_root=../shared/data/voc_sample --output_dir=data/voc_sample
  python -m trainer.main --config=configs/voc_sample_finetune.py --data_dir=data/voc_sample \
      --model_dir=runs/voc_sample \
      --config.model.backbone_weights=../shared/weights/mobilenet_v2_1.0_imagenet_no_top.weights.h5
"""

from configs import base


def get_config():
  config = base.get_config()
  config.model.aspp_rates = ()  # The lean head: ~6% faster training on CPUs than ASPP 6/12/18 (README, Results).
  config.model.freeze_backbone_bn = True  # The ImageNet weights' batch norm is folded; batch 8 is too small.
  config.input.crop_size = 321
  config.batch_size = 8
  config.eval_batch_size = 8
  config.optimizer.update(name="adam", learning_rate=2e-4, weight_decay=0.0, schedule="poly", warmup_steps=20)
  config.train.epochs = 12
  return config
