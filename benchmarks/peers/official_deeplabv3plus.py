"""Peer: tensorflow/models official/vision `mnv2_deeplabv3plus_cityscapes` at 21 classes, timed on request.

Runs inside the peer venv (tf-models-official 2.20 + TensorFlow 2.20), started by ../model_throughput.py, and
answers timing requests on stdin (harness.serve):
  .venv-peers/bin/python benchmarks/peers/official_deeplabv3plus.py --aspp_rates=6,12,18
The experiment's model with only what the comparison needs changed: 21 classes, ASPP rates (the experiment
has none, the lean head), depthwise-separable ASPP convs when there are rates (as our `separable=True`),
global image pooling (the experiment pools 512x1024 crops), no sync BN on one device, no weight decay, and
with --freeze_backbone_bn the backbone's BN layers non-trainable (as our trainer's default). Its
logits (stride 4) are resized to the input size before the loss, as the experiment's loss does.
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness
from official.core import exp_factory
from official.vision.modeling import factory
import tensorflow as tf
import tf_keras


def build_model(aspp_rates: list[int], freeze_backbone_bn: bool = False) -> tf_keras.Model:
  config = exp_factory.get_exp_config("mnv2_deeplabv3plus_cityscapes").task.model
  config.num_classes = harness.NUM_CLASSES
  config.decoder.aspp.dilation_rates = aspp_rates
  config.decoder.aspp.use_depthwise_convolution = bool(aspp_rates)
  config.decoder.aspp.pool_kernel_size = None
  config.norm_activation.use_sync_bn = False
  input_specs = tf_keras.layers.InputSpec(shape=[None, None, None, 3])
  model = factory.build_segmentation_model(input_specs=input_specs, model_config=config)
  if freeze_backbone_bn:  # tf_keras runs a non-trainable BN layer in inference mode, like Keras 3.
    for layer in model.backbone.submodules:
      if isinstance(layer, tf_keras.layers.BatchNormalization):
        layer.trainable = False
  return model


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--aspp_rates", default="", help="comma-separated, empty for the lean head")
  parser.add_argument("--freeze_backbone_bn", action="store_true")
  args = parser.parse_args()
  model = build_model([int(rate) for rate in args.aspp_rates.split(",") if rate], args.freeze_backbone_bn)

  def forward(images, training):
    logits = model(images, training=training)["logits"]
    return tf.image.resize(logits, tf.shape(images)[1:3], method="bilinear")

  forward(tf.zeros([1, 64, 64, 3]), training=False)  # Builds the variables.
  info = {
    "model": "official mnv2_deeplabv3plus",
    "tensorflow": tf.__version__,
    "params": int(model.count_params()),
    "flops_512": harness.count_flops(forward, 512, 512),
  }
  timer = harness.StepTimer(forward, lambda: model.trainable_variables, tf_keras.optimizers.SGD(0.01, momentum=0.9))
  harness.serve(timer, info)


if __name__ == "__main__":
  main()
