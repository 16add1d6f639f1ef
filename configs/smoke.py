"""A tiny CPU run that exercises every part of training in about a minute (demo, tests, a quick check).

python -m trainer.main --config=configs/smoke.py --data_dir=DATA --model_dir=runs/smoke
"""

from configs import base


def get_config():
  config = base.get_config()
  config.model.alpha = 0.35
  config.model.aspp_rates = ()  # The lean "mobile" head.
  config.model.backbone_weights = ""
  config.model.freeze_backbone_bn = False
  config.input.crop_size = 128
  config.input.eval_pad_to = 512
  config.batch_size = 4
  config.eval_batch_size = 4
  config.optimizer.update(name="adam", learning_rate=1e-3, weight_decay=0.0, schedule="constant")
  config.train.epochs = 2
  config.train.num_triptychs = 2
  return config
