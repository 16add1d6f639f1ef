"""The demo's run (`make demo`): a tiny model that learns the generated textures in a couple of CPU minutes.

  python -m preprocessing.synthetic_voc --root=demo_output/voc_sample --num_classes=6 --num_train=96 \
      --num_val=24 --height=160 --width=200
  python -m preprocessing.make_tfrecords --voc_root=demo_output/voc_sample --output_dir=demo_output/tfrecords
  python -m trainer.main --config=configs/demo.py --data_dir=demo_output/tfrecords --model_dir=demo_output/runs/demo
"""

from configs import smoke


def get_config():
  config = smoke.get_config()
  config.model.num_classes = 6  # preprocessing/synthetic_voc.py's textures; names from the data's class_names.txt.
  config.input.crop_size = 160
  config.input.canvas_size = 256
  config.input.min_scale = 0.75
  config.input.max_scale = 1.25
  config.batch_size = 8
  config.eval_batch_size = 8
  config.optimizer.learning_rate = 3e-3
  config.optimizer.schedule = "cosine"
  config.train.epochs = 20
  config.train.num_triptychs = 3
  return config
