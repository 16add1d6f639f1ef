"""Published DeepLab models: import (TFLite files, TF1 checkpoints, archives, URLs), DeepLab's 513 scoring, and
fine-tuning from an import (init_from, a residual decoder, another class count)."""

import json
import re
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import tensorflow as tf

from configs import smoke
from contracts import run_dir
from deeplab import building
from deeplab import metrics as metrics_lib
from deeplab import mobilenet_v2
from deeplab import pixels
from deeplab import run_folder
from deeplab import tfrecords
from inference import evaluation
from inference import exporting
from inference import importing
from inference import tflite_interpreter
from preprocessing import make_tfrecords
from preprocessing import synthetic_voc
from tests import http_fixtures
from tests.conftest import REPO_ROOT
from tests.conftest import TIE
from trainer import config_validation
from trainer import distribute
from trainer import train

# ---------------------------------------------------------------------------------------------------------------
# A research/deeplab checkpoint written by the test, in DeepLab's variable names
# ---------------------------------------------------------------------------------------------------------------


def deeplab_scope(layer_name: str) -> str:
  """research/deeplab's scope of one of our layers, written out here independently of inference/importing.py."""
  if layer_name in ("Conv1", "bn_Conv1"):
    return "MobilenetV2/Conv"
  match = re.fullmatch(r"(?:expanded_conv|block_(\d+))_(expand|depthwise|project)(?:_BN)?", layer_name)
  if match:
    return f"MobilenetV2/expanded_conv{'_' + match.group(1) if match.group(1) else ''}/{match.group(2)}"
  fixed = {
    "aspp_pooling": "image_pooling",
    "aspp0": "aspp0",
    "aspp_projection": "concat_projection",
    "decoder_low_level": "decoder/feature_projection0",
    "logits": "logits/semantic",
  }
  stem = re.sub(r"_(conv|bn)$", "", layer_name)
  if stem in fixed:
    return fixed[stem]
  match = re.fullmatch(r"(aspp\d+_(?:depthwise|pointwise)|decoder_conv\d+_(?:depthwise|pointwise))(?:_bn)?", layer_name)
  assert match, layer_name
  return ("decoder/" if layer_name.startswith("decoder") else "") + match.group(1)


def write_deeplab_checkpoint(model, prefix: str, *, extra: dict | None = None, replace: dict | None = None) -> None:
  """The model's weights as research/deeplab saves them: `<scope>/weights`, `<scope>/depthwise_weights`,
  `<scope>/biases`, `<scope>/BatchNorm/{gamma,beta,moving_mean,moving_variance}` at DeepLab's epsilons."""
  tensors = {"global_step": np.int64(30000)}
  for layer in model.layers:
    if not layer.weights:
      continue
    scope = deeplab_scope(layer.name)
    values = layer.get_weights()
    if isinstance(layer, tf.keras.layers.BatchNormalization):
      gamma, beta, mean, variance = values
      epsilon = 1e-3 if scope.startswith("MobilenetV2/") else 1e-5
      gamma = gamma * np.sqrt(variance + epsilon) / np.sqrt(variance + mobilenet_v2.BN_EPSILON)
      for name, value in zip(
        ("gamma", "beta", "moving_mean", "moving_variance"), (gamma, beta, mean, variance), strict=True
      ):
        tensors[f"{scope}/BatchNorm/{name}"] = value
    else:
      kind = "depthwise_weights" if isinstance(layer, tf.keras.layers.DepthwiseConv2D) else "weights"
      tensors[f"{scope}/{kind}"] = values[0]
      if len(values) > 1:
        tensors[f"{scope}/biases"] = values[1]
  tensors.update(extra or {})
  tensors.update(replace or {})
  names = sorted(tensors)
  tf.raw_ops.SaveV2(
    prefix=prefix,
    tensor_names=names,
    shape_and_slices=[""] * len(names),
    tensors=[tf.constant(tensors[n]) for n in names],
  )


def deeplabv3plus_config(**model_fields):
  """A small DeepLabV3+ as research/deeplab builds them (depth 0.5 rounding, ASPP 6/12/18, corner-aligned)."""
  config = smoke.get_config()
  config.model.update(
    {
      "alpha": 0.5,
      "depth_divisor": 1,
      "aspp_rates": (6, 12, 18),
      "decoder": True,
      "align_corners": True,
      "freeze_backbone_bn": True,
      **model_fields,
    }
  )
  return config


def randomize_batch_norm(model, seed: int = 0) -> None:
  rng = np.random.default_rng(seed)
  for layer in model.layers:
    if isinstance(layer, tf.keras.layers.BatchNormalization):
      size = layer.gamma.shape[0]
      layer.set_weights(
        [rng.uniform(0.5, 1.5, size), rng.normal(0, 0.2, size), rng.normal(0, 0.2, size), rng.uniform(0.5, 1.5, size)]
      )


@pytest.fixture(scope="module")
def deeplab_checkpoint(tmp_path_factory):
  """(checkpoint prefix, the model whose weights it holds)."""
  tf.keras.utils.set_random_seed(1)
  model = building.create_model(deeplabv3plus_config())
  randomize_batch_norm(model)
  folder = tmp_path_factory.mktemp("deeplabv3plus_mnv2_dm05_pascal_train_aug")
  prefix = str(folder / "model.ckpt-30000")
  write_deeplab_checkpoint(model, prefix)
  return prefix, model


def _outputs(model, size: int = 65) -> np.ndarray:
  image = tf.random.stateless_uniform([2, size, size, 3], seed=[5, 6], maxval=255.0)
  return model(image, training=False).numpy()


def test_a_deeplab_checkpoint_imports_into_the_same_function(deeplab_checkpoint, tmp_path):
  prefix, source_model = deeplab_checkpoint
  report = importing.import_model(prefix, str(tmp_path / "run"))
  assert report["kind"] == "checkpoint" and report["decoder"] and report["alpha"] == 0.5
  config, model, _ = run_folder.load_run(str(tmp_path / "run"))
  assert config.model.align_corners and tuple(config.model.aspp_rates) == (6, 12, 18)
  assert model.get_layer("block_1_project").kernel.shape[-1] == 12  # DeepLab's depth-0.5 rounding, not 16.
  # Every weight in its place and each batch norm carried over from DeepLab's epsilon: the same function, up to
  # one float32 rounding of each folded gamma (3e-7 measured on outputs of spread 0.4; 1e-4 is 300x that).
  np.testing.assert_allclose(_outputs(model), _outputs(source_model), rtol=1e-4, atol=1e-4)
  # Spot checks of the name mapping, written out by hand.
  checkpoint = tf.train.load_checkpoint(prefix)
  np.testing.assert_array_equal(
    model.get_layer("block_3_expand").kernel.numpy(),
    checkpoint.get_tensor("MobilenetV2/expanded_conv_3/expand/weights"),
  )
  np.testing.assert_array_equal(
    model.get_layer("decoder_conv1_pointwise").kernel.numpy(),
    checkpoint.get_tensor("decoder/decoder_conv1_pointwise/weights"),
  )
  np.testing.assert_array_equal(model.get_layer("logits").bias.numpy(), checkpoint.get_tensor("logits/semantic/biases"))


def test_an_archive_served_over_http_imports_like_the_checkpoint(deeplab_checkpoint, tmp_path):
  prefix, source_model = deeplab_checkpoint
  archive = tmp_path / "deeplabv3plus_dm05.tar.gz"
  folder = prefix.rsplit("/", 1)[0]
  with tarfile.open(archive, "w:gz") as tar:
    tar.add(folder, arcname="deeplabv3plus_mnv2_dm05_pascal_train_aug")
  with http_fixtures.ArchiveServer() as server:
    url = server.add("/models/deeplabv3plus_dm05.tar.gz", body=archive.read_bytes(), drop_after=5000)
    with pytest.raises(importing.SourceModelError, match="cut off at 5.0 KB .* re-run to resume"):
      importing.import_model(url, str(tmp_path / "run"), download_dir=str(tmp_path / "downloads"))
    report = importing.import_model(url, str(tmp_path / "run"), download_dir=str(tmp_path / "downloads"))
    assert len(server.requests) == 2 and server.requests[1][1] == "bytes=5000-"  # The second run resumed.
  assert report["kind"] == "checkpoint"
  _, model, _ = run_folder.load_run(str(tmp_path / "run"))
  np.testing.assert_allclose(_outputs(model), _outputs(source_model), rtol=1e-4, atol=1e-4)


def test_a_weight_without_a_place_or_of_the_wrong_shape_is_named(deeplab_checkpoint, tmp_path):
  prefix, source_model = deeplab_checkpoint
  unknown = str(tmp_path / "unknown" / "model.ckpt-1")
  extra = {
    "decoder/refine_conv/weights": np.zeros([1, 1, 8, 8], np.float32),
    "decoder/refine_conv/biases": np.zeros([8], np.float32),
  }
  write_deeplab_checkpoint(source_model, unknown, extra=extra)
  with pytest.raises(importing.SourceModelError, match="'decoder/refine_conv' has no counterpart"):
    importing.import_model(unknown, str(tmp_path / "run1"))

  misshapen = str(tmp_path / "misshapen" / "model.ckpt-1")
  write_deeplab_checkpoint(
    source_model,
    misshapen,
    replace={"MobilenetV2/expanded_conv_3/expand/weights": np.zeros([1, 1, 12, 50], np.float32)},
  )
  result = subprocess.run(
    [sys.executable, "-m", "inference.import_model", f"--source={misshapen}", f"--model_dir={tmp_path / 'run2'}"],
    cwd=REPO_ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 2
  assert (
    result.stderr.strip()
    .splitlines()[-1]
    .startswith(
      "error: DeepLab scope 'MobilenetV2/expanded_conv_3/expand': weights of shapes [(1, 1, 12, 50)] do not fit "
      "layer 'block_3_expand'"
    )
  )
  assert not (tmp_path / "run2").exists()


# ---------------------------------------------------------------------------------------------------------------
# DeepLab's scoring on 513 canvases
# ---------------------------------------------------------------------------------------------------------------


def test_pad_to_scores_each_image_on_a_canvas_and_crops_back(tmp_path):
  tf.keras.utils.set_random_seed(2)
  model = building.create_model(deeplabv3plus_config(decoder=False))
  randomize_batch_norm(model, seed=2)
  logits = model.get_layer("logits")
  logits.kernel.assign(logits.kernel * 10.0)  # Random weights give near-uniform probabilities otherwise.
  image = tf.random.stateless_uniform([50, 37, 3], seed=[1, 1], maxval=255.0)
  canvas = tf.pad(image, [[0, 15], [0, 28], [0, 0]], constant_values=pixels.MEAN_PIXEL)
  logits = model(canvas[tf.newaxis], training=False)
  expected = tf.nn.softmax(logits)[0, :50, :37]
  # The predictor's graph (a batch of two with the mirror) against eager calls: other kernels, logits apart by
  # rounding (< conftest.TIE of their spread); a probability moves by at most half its logits' change, a sum of two
  # by less than TIE x spread (5e-4 here; 0 and 8e-7 measured), where the canvas itself moves them by 1e-2.
  tolerance = TIE * float(np.std(logits))
  np.testing.assert_allclose(evaluation.make_predictor(model, [1.0], False, pad_to=65)(image), expected, atol=tolerance)
  mirrored = tf.pad(image[:, ::-1], [[0, 15], [0, 28], [0, 0]], constant_values=pixels.MEAN_PIXEL)
  expected_flip = expected + tf.nn.softmax(model(mirrored[tf.newaxis], training=False))[0, :50, :37][:, ::-1]
  np.testing.assert_allclose(
    evaluation.make_predictor(model, [1.0], True, pad_to=65)(image), expected_flip, atol=tolerance
  )
  native = evaluation.make_predictor(model, [1.0], False)(image)
  # The canvas changes the result (9.6e-3 measured), far beyond the tolerance.
  assert native.shape == (50, 37, 21) and np.abs(native - expected).max() > 10 * tolerance


# ---------------------------------------------------------------------------------------------------------------
# Fine-tuning from an import: init_from, the residual decoder, another class count (generated data)
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def imported_deeplabv3(tmp_path_factory):
  """A DeepLabV3 run directory as inference.import_model writes one (random weights, non-trivial batch norm)."""
  tf.keras.utils.set_random_seed(3)
  config = deeplabv3plus_config(decoder=False, aspp_rates=())
  model = building.create_model(config)
  randomize_batch_norm(model, seed=3)
  run_dir = tmp_path_factory.mktemp("imported")
  importing.write_run(model, config, str(run_dir), {"source": "test"})
  return str(run_dir), model


def test_a_residual_decoder_on_an_import_starts_at_the_imports_predictions(imported_deeplabv3):
  run_dir, source_model = imported_deeplabv3
  config = deeplabv3plus_config(aspp_rates=(), residual_decoder=True, init_from=run_dir)
  model = building.create_model(config)
  copied = train.initialize_from(model, run_dir)
  assert "logits" in copied and "block_16_project" in copied and "decoder_logits" not in copied
  # Corner-aligned resizes on 16k + 1 inputs: stride 16 -> 4 -> 1 is the same map as 16 -> 1, in exact arithmetic;
  # in float32 a few roundings of each output apart (1.2e-7 measured on outputs of spread 0.46): 1e-5 is 80x that.
  np.testing.assert_allclose(_outputs(model), _outputs(source_model), rtol=1e-5, atol=1e-5)


def test_trainable_layers_new_needs_init_from():
  model = building.create_model(deeplabv3plus_config(decoder=False, aspp_rates=()))
  with pytest.raises(config_validation.ConfigError, match="needs config.model.init_from"):
    train.set_trainable_layers(model, "new", set())
  with pytest.raises(config_validation.ConfigError, match="use all, new or head"):
    train.set_trainable_layers(model, "decoder", set())


def test_fine_tuning_an_import_to_three_classes(imported_deeplabv3, tmp_path, absl_messages):
  run_dir, source_model = imported_deeplabv3
  root, records, model_dir = tmp_path / "voc", tmp_path / "records", tmp_path / "run"
  synthetic_voc.write_dataset(str(root), num_train=8, num_val=4, height=65, width=81, num_classes=3)
  make_tfrecords.run(["make_tfrecords", f"--voc_root={root}", f"--output_dir={records}", "--num_classes=3"])
  config = deeplabv3plus_config(
    aspp_rates=(), residual_decoder=True, init_from=run_dir, trainable_layers="new", num_classes=3
  )
  config.input.crop_size = 65
  config.input.eval_pad_to = 97
  config.train.steps = 4
  config.train.num_triptychs = 0
  report = train.train_and_evaluate(
    config, data_dir=str(records), model_dir=str(model_dir), strategy=distribute.create_strategy("default")
  )
  assert report["steps"] == 4 and len(report["per_class_iou"]) == 3
  assert any(
    re.search(r"fresh: .*logits \(shape \(1, 1, 256, 3\) here, \(1, 1, 256, 21\) in the source\)", m)
    for m in absl_messages
  ), absl_messages
  _, tuned, _ = run_folder.load_run(str(model_dir))
  # What was imported stayed as imported; the new logits and the decoder trained.
  for name in ("Conv1", "block_8_expand", "aspp_projection_conv", "aspp_projection_bn"):
    for ours, theirs in zip(
      tuned.get_layer(name).get_weights(), source_model.get_layer(name).get_weights(), strict=True
    ):
      np.testing.assert_array_equal(ours, theirs)
  assert tuned.get_layer("logits").kernel.shape == (1, 1, 256, 3)
  assert np.abs(tuned.get_layer("decoder_logits").kernel.numpy()).max() > 0


# ---------------------------------------------------------------------------------------------------------------
# Google's published TFLite files (../shared/models)
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def voc_sample_val(voc_sample, tmp_path_factory):
  """The first 40 val images of the real sample, (uint8 image, label) pairs, through our records."""
  shard_dir = tmp_path_factory.mktemp("voc_sample_records")
  make_tfrecords.run(["make_tfrecords", f"--voc_root={voc_sample}", f"--output_dir={shard_dir}", "--splits=val"])
  return [
    (image[0].numpy().astype(np.uint8), label[0].numpy())
    for image, label in tfrecords.eval_dataset(f"{shard_dir}/val-*.tfrecord", batch_size=1).take(40)
  ]


def test_googles_tflite_model_imports_and_scores_as_the_file_does(reference_tflite, voc_sample_val, tmp_path):
  """The import reproduces the published model: the same classes as the TFLite interpreter on almost every pixel,
  and, scored as DeepLab scored (513 canvases), the file's own mIoU on the same real images within a point."""
  images = [image for image, _ in voc_sample_val]
  report = importing.import_model(str(reference_tflite), str(tmp_path / "run"), check_images=images[:4])
  assert report["kind"] == "tflite" and not report["decoder"] and report["num_classes"] == 21
  # Float (ours) against int8 (the interpreter's integer arithmetic, the same on every CPU): they differ by the
  # file's 8-bit quantization of activations, not by rounding (which flips < 0.1% of pixels): 99.6% on these 4
  # photos, 99.4% (worst 98.0%) over 20 in the README's figures.
  assert report["tflite_pixel_agreement"]["mean"] > 0.98
  _, model, _ = run_folder.load_run(str(tmp_path / "run"))
  predict = evaluation.make_predictor(model, [1.0], False, pad_to=513)
  interpreter = tflite_interpreter.make_interpreter(str(reference_tflite))
  ours, theirs = np.zeros((21, 21), np.int64), np.zeros((21, 21), np.int64)
  for image, label in voc_sample_val:
    ours += metrics_lib.count_confusion(label, np.argmax(predict(image.astype(np.float32)), -1), 21)
    theirs += metrics_lib.count_confusion(label, importing.tflite_classes(interpreter, image), 21)
  ours, theirs = metrics_lib.summarize_confusion(ours)["miou"], metrics_lib.summarize_confusion(theirs)["miou"]
  # 0.6499 against 0.6480 measured: int8's quantization, not rounding, makes the difference; a point is 5x it.
  assert theirs > 0.6 and abs(ours - theirs) < 0.01, (ours, theirs)


def test_the_depth_05_file_imports_with_deeplabs_channel_rounding(reference_tflite, voc_sample_val, tmp_path):
  dm05 = reference_tflite.parent / "deeplabv3_mnv2_dm05_pascal_quant.tflite"
  report = importing.import_model(str(dm05), str(tmp_path / "run"), check_images=[voc_sample_val[0][0]])
  # Float against int8, as above: 99.05% on this photo (98.65% over 20, worst 85.64%, in the README's figures).
  assert report["alpha"] == 0.5 and report["tflite_pixel_agreement"]["mean"] > 0.95
  config, model, _ = run_folder.load_run(str(tmp_path / "run"))
  assert config.model.depth_divisor == 1 and model.get_layer("block_1_project").kernel.shape[-1] == 12
  assert json.loads((tmp_path / "run" / "import.json").read_text())["layers_set"] == report["layers_set"]


def test_import_model_cli_prints_the_agreement(reference_tflite, voc_sample, tmp_path):
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "inference.import_model",
      f"--source={reference_tflite}",
      f"--model_dir={tmp_path}",
      f"--check_images={voc_sample}/JPEGImages/2007_0000*.jpg",
      "--num_check_images=2",
    ],
    cwd=REPO_ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-2000:]
  # 90-99.99%: float against int8 as above (~99%); never all pixels, int8 quantization sees to that.
  assert re.search(r"same class as the TFLite interpreter on (9\d\.\d\d)% of the pixels of 2 images", result.stdout)
  assert (tmp_path / "config.json").exists() and (tmp_path / run_dir.FINAL_WEIGHTS).exists()


def test_int8_export_of_an_import_keeps_the_files_weight_grids(reference_tflite, voc_sample_val, tmp_path, capsys):
  """The imported weights are multiples of the file's scales; the int8 export writes them on those grids (not
  TFLite's own re-rounding) wherever a channel's multiples fit int8."""
  importing.import_model(str(reference_tflite), str(tmp_path / "run"))
  _, model, _ = run_folder.load_run(str(tmp_path / "run"))
  images = [
    exporting._fit_and_pad(image, pixels.DEEPLAB_CANVAS, pixels.MEAN_PIXEL)[0][np.newaxis]
    for image, _ in voc_sample_val[:2]
  ]
  capsys.readouterr()
  exporting.convert_tflite(model, lambda: iter(images))
  kept, total = map(int, re.search(r"int8: (\d+) of (\d+) convolution channels keep", capsys.readouterr().err).groups())
  assert total > 10_000 and kept >= 0.95 * total, (kept, total)
