"""CamVid's 11 classes from Google's published DeepLabV3-MobileNetV2 VOC model, sized for a 2-core CPU.

  printf '%s\n' sky building pole road pavement tree signsymbol fence car pedestrian bicyclist > camvid_classes.txt
  python -m preprocessing.make_tfrecords --images='../shared/data/camvid/{split}/*.png' \
      --masks='../shared/data/camvid/{split}annot/{stem}.png' --class_names=camvid_classes.txt --void_values=11 \
      --output_dir=data/camvid
  python -m inference.import_model --source=../shared/models/deeplabv3_mnv2_pascal_quant.tflite \
      --model_dir=runs/deeplabv3_mnv2_pascal
  python -m trainer.main --config=configs/camvid_from_published.py --data_dir=data/camvid \
      --model_dir=runs/camvid_from_published
  python -m inference.evaluate --model_dir=runs/camvid_from_published --data_dir=data/camvid --scales=1.0,1.5,2.0 \
      --flip
  python -m inference.export --model_dir=runs/camvid_from_published --output_dir=exports/camvid --tflite

The import gives the encoder and ASPP; the logits (11 classes instead of VOC's 21) start fresh, and a DeepLabV3+
decoder joins the stride-4 features, where poles, signs and pedestrians are still a few pixels wide. Everything
trains. Crops of 193x257 at scales 0.5-1.25 (a whole frame at half size, a quarter of one at full size; 3.4x
cheaper per step than whole frames, what lets 1000 steps fit a 2-core CPU's half hour), class weights from the
training split's pixel counts by median frequency, as SegNet weighed CamVid (ENet's inverse_log, the other choice,
and larger scales scored lower: README, "CamVid"). Validation and evaluation at the photos' own 360x480: on a
padded 480x480 canvas the image pooling averages over padding, and scores ~3 points lower. The evaluation adds the
frame at 1.5 and 2x and mirrored, where poles and signs are wide enough to be found (README, "CamVid").
"""

from configs import base


def get_config():
  config = base.get_config()
  config.model.num_classes = 11
  config.model.init_from = "runs/deeplabv3_mnv2_pascal"  # What python -m inference.import_model wrote.
  config.model.backbone_weights = ""  # init_from provides them.
  config.model.aspp_rates = ()  # Google's mobile models: image pooling + 1x1 branch only.
  config.model.align_corners = True  # What the published weights were trained with.
  config.model.decoder = True
  config.model.trainable_layers = "all"
  for field in ("crop_size", "eval_pad_to"):
    del config.input[field]  # ints in base.py; (height, width) here
  config.input.crop_size = (193, 257)  # 16 x k + 1 for corner-aligned resizes
  config.input.canvas_size = 480
  config.input.min_scale = 0.5
  config.input.max_scale = 1.25
  config.input.eval_pad_to = (360, 480)  # CamVid's frames: validation at their own size
  config.batch_size = 8
  config.eval_batch_size = 8
  config.loss.class_weighting = "median_frequency"
  config.optimizer.update(name="adam", learning_rate=5e-4, weight_decay=0.0, schedule="poly", warmup_steps=50)
  config.train.update(epochs=0, steps=1000, steps_per_loop=200, num_triptychs=4)
  return config
