"""Fine-tunes DeepLabV3+ from Google's published DeepLabV3-MobileNetV2 VOC model on a few hundred images, on a CPU.

  python -m inference.import_model --source=../shared/models/deeplabv3_mnv2_pascal_quant.tflite \
      --model_dir=runs/deeplabv3_mnv2_pascal --check_images='../shared/data/voc_sample/JPEGImages/2007_0*.jpg'
  python -m preprocessing.make_tfrecords --voc_root=../shared/data/voc_sample --output_dir=data/voc_sample
  python -m trainer.main --config=configs/finetune_from_published.py --data_dir=data/voc_sample \
      --model_dir=runs/voc_sample_from_published
  python -m inference.evaluate --model_dir=runs/voc_sample_from_published --data_dir=data/voc_sample --pad_to=513

The import's encoder, ASPP and logits stay as they are; only a decoder is added and trained, and it adds a
correction to the import's logits that starts at zero (config.model.residual_decoder): the first step predicts
exactly what the import does, and training can only refine it (boundaries, at stride 4 instead of 16). A fresh
decoder that replaces the logits instead throws away most of what the import knows in a short CPU fine-tune.
For your own classes, set config.model.num_classes: the logits (of another shape) then start fresh and, with
trainable_layers="new", train along with the decoder.
"""

from configs import voc_sample_finetune


def get_config():
  config = voc_sample_finetune.get_config()  # Its optimizer (Adam 2e-4, poly, warm-up) and batch 8.
  config.model.init_from = "runs/deeplabv3_mnv2_pascal"  # What python -m inference.import_model wrote.
  config.model.backbone_weights = ""  # init_from provides them.
  config.model.aspp_rates = ()  # Google's mobile models: image pooling + 1x1 branch only.
  config.model.decoder = True
  config.model.residual_decoder = True
  config.model.align_corners = True  # What the published weights were trained with.
  config.model.trainable_layers = "new"  # The decoder (and logits of another shape), nothing imported.
  config.input.crop_size = 513  # DeepLab's canvas: 16 x 32 + 1, made for corner-aligned resizes.
  config.input.eval_pad_to = 513
  config.train.update(epochs=0, steps=200, steps_per_loop=100)
  return config
