"""inference.predict: masks, overlays and triptychs of photos, bad files skipped, Keras and SavedModel agree.

Every test runs on generated pairs (conftest's voc_data), so that a clone without ../shared covers prediction, and
again on real VOC photos where ../shared is."""

import io
import shutil
import subprocess
import sys

import cv2
import keras
import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from configs import smoke
from contracts import run_dir
from contracts import voc
from deeplab import building
from deeplab import run_folder
from deeplab import visualize
from inference import prediction
from tests.conftest import REPO_ROOT
from tests.conftest import SOFTMAX_RESOLUTION
from tests.conftest import clear_pixels
from tests.conftest import is_voc_sample

NUM_REAL = 3  # val ids with a ground-truth mask; one more photo is stored as a PNG under an id the root lacks


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, voc_data):
  """A run folder as training leaves it (config.json + final weights) of an untrained smoke-size model, its last
  layer scaled so that the logits spread like a trained model's (an untrained net's are ~1e-7, below float32
  softmax resolution): many classes per photo with clear margins, so a mask off by a decode or resize shows.
  Scaled on a photo of the same root as the tests' photos (a real one, or the first generated val image), since
  the spread depends on the pictures."""
  model_dir = tmp_path_factory.mktemp("run")
  config = smoke.get_config()
  keras.utils.set_random_seed(3)
  model = building.create_model(config)
  image_id = "2007_000032" if is_voc_sample(voc_data) else voc.read_split_ids(str(voc_data), "val")[0]
  photo = cv2.imread(str(voc_data / voc.IMAGE_DIR / f"{image_id}.jpg"))[..., ::-1]
  spread = float(np.std(model(photo[np.newaxis].astype(np.float32), training=False)))
  logits = model.get_layer("logits")
  logits.set_weights([weight / spread for weight in logits.get_weights()])
  (model_dir / "checkpoints").mkdir()
  model.save_weights(str(model_dir / run_dir.FINAL_WEIGHTS))
  (model_dir / "config.json").write_text(config.to_json_best_effort(indent=2))
  return str(model_dir)


@pytest.fixture(scope="module")
def photos(voc_data, tmp_path_factory):
  """A folder of val photos (JPEGs with masks, one PNG without) among a truncated JPEG, a text file and an empty
  file."""
  folder = tmp_path_factory.mktemp("photos")
  ids = (voc_data / voc.SPLIT_DIR / "val.txt").read_text().split()[: NUM_REAL + 1]
  for image_id in ids[:NUM_REAL]:
    shutil.copy(voc_data / voc.IMAGE_DIR / f"{image_id}.jpg", folder)
  cv2.imwrite(str(folder / "no_mask_photo.png"), cv2.imread(str(voc_data / voc.IMAGE_DIR / f"{ids[-1]}.jpg")))
  jpeg = (voc_data / voc.IMAGE_DIR / f"{ids[0]}.jpg").read_bytes()
  (folder / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
  (folder / "notes.txt").write_text("not a picture\n")
  (folder / "empty.jpg").write_bytes(b"")
  return folder, ids[:NUM_REAL] + ["no_mask_photo"]


def _run(*args, timeout=300):
  return subprocess.run(
    [sys.executable, "-m", "inference.predict", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout
  )


@pytest.fixture(scope="module")
def keras_outputs(tiny_run, photos, voc_data, tmp_path_factory):
  folder, _ = photos
  output_dir = tmp_path_factory.mktemp("predictions")
  result = _run(
    f"--model_dir={tiny_run}",
    f"--input={folder}",
    f"--output_dir={output_dir}",
    "--format=mask,overlay,triptych",
    f"--voc_root={voc_data}",
  )
  return result, output_dir


def _read_palette_png(path):
  with Image.open(path) as picture:
    return picture.mode, np.asarray(picture.getpalette(), np.uint8).reshape(-1, 3), np.asarray(picture)


def test_folder_writes_the_readable_photos_and_names_each_bad_file_with_its_reason(keras_outputs, photos):
  result, output_dir = keras_outputs
  _, ids = photos
  assert result.returncode == 0, result.stderr[-3000:]
  stderr = result.stderr
  assert "skipped" in stderr and "truncated.jpg: corrupt JPEG" in stderr
  assert "notes.txt: not a JPEG or PNG image" in stderr
  assert "empty.jpg: empty file" in stderr
  summary = result.stdout.strip().splitlines()[-1]
  assert summary.startswith(f"wrote {len(ids)} image(s)") and f"to {output_dir}" in summary
  assert "skipped 3" in summary and "truncated.jpg" in summary
  assert f"{len(ids) + 3}/{len(ids) + 3} images" in result.stdout  # progress reached the end...
  assert "\x1b" not in result.stdout and "\r" not in result.stdout  # ...in plain lines, stdout not being a terminal
  expected = {f"{i}{suffix}" for i in ids for suffix in (".png", "_overlay.jpg", "_triptych.png")}
  assert {p.name for p in output_dir.iterdir()} == expected


def _logits(model, image):
  return model(image[np.newaxis].astype(np.float32), training=False)[0].numpy()


def _assert_is_argmax(mask, logits):
  """mask == argmax(logits) wherever rounding cannot decide the class (conftest.clear_pixels; the masks are argmaxes
  of softmax probabilities computed by other kernels and graphs: the command's predictor, a SavedModel). Those must
  be nearly every pixel: 0.03-0.05% tie within rounding on these models' logits, < 0.1% is asserted."""
  clear = clear_pixels(logits, resolution=SOFTMAX_RESOLUTION)
  assert clear.mean() > 0.999
  np.testing.assert_array_equal(mask[clear], np.argmax(logits, axis=-1)[clear])


def _photo(folder, image_id):
  return cv2.imread(str(next(folder.glob(f"{image_id}.*"))))[..., ::-1]  # OpenCV decodes as the pipeline does


def test_masks_are_voc_palette_pngs_of_the_models_argmax_at_each_photos_size(keras_outputs, photos, tiny_run):
  _, output_dir = keras_outputs
  folder, ids = photos
  _, model, _ = run_folder.load_run(tiny_run)
  sizes = set()
  for image_id in ids:
    image = _photo(folder, image_id)
    mode, palette, mask = _read_palette_png(output_dir / f"{image_id}.png")
    assert mode == "P"
    np.testing.assert_array_equal(palette, voc.palette())
    assert mask.shape == image.shape[:2]
    _assert_is_argmax(mask, _logits(model, image))
    assert len(np.unique(mask)) > 3  # A constant mask would make the comparison weak.
    sizes.add(mask.shape)
  assert len(sizes) > 1


def test_flip_averages_the_mirrored_probabilities(photos, tiny_run):
  folder, ids = photos
  _, model, _ = run_folder.load_run(tiny_run)
  image = _photo(folder, ids[0])
  mask = prediction.keras_segmenter(model, [1.0], flip=True)(b"", image)
  probabilities = tf.nn.softmax(_logits(model, image)) + tf.nn.softmax(_logits(model, image[:, ::-1]))[:, ::-1]
  _assert_is_argmax(mask, np.log(probabilities.numpy()))
  assert (mask != prediction.keras_segmenter(model)(b"", image)).mean() > 0.01  # the mirror did change something


def test_overlay_and_triptych_sizes_and_the_ground_truth_panel(keras_outputs, photos, voc_data):
  _, output_dir = keras_outputs
  folder, ids = photos
  for image_id in ids:
    height, width = _photo(folder, image_id).shape[:2]
    overlay = cv2.imread(str(output_dir / f"{image_id}_overlay.jpg"))
    assert overlay.shape == (height, width, 3)
    triptych = cv2.imread(str(output_dir / f"{image_id}_triptych.png"))[..., ::-1]
    mask_path = voc_data / voc.MASK_DIR / f"{image_id}.png"
    _, _, mask = _read_palette_png(output_dir / f"{image_id}.png")
    panels = 3 if mask_path.exists() else 2
    panels_height = height + 24  # titled panels, 4-pixel gaps; the legend strip below them
    assert triptych.shape[1:] == (panels * width + 4 * (panels - 1), 3) and triptych.shape[0] > panels_height
    if mask_path.exists():
      _, _, truth = _read_palette_png(mask_path)
      np.testing.assert_array_equal(triptych[24:panels_height, width + 4 : 2 * width + 4], voc.colorize(truth))
      np.testing.assert_array_equal(triptych[24:panels_height, 2 * width + 8 :], voc.colorize(mask))
    shown = np.unique(np.concatenate([mask.ravel()] + ([truth.ravel()] if mask_path.exists() else [])))
    np.testing.assert_array_equal(triptych[panels_height:], visualize.legend(shown, voc.CLASS_NAMES, triptych.shape[1]))
  assert sum((voc_data / voc.MASK_DIR / f"{i}.png").exists() for i in ids) == NUM_REAL


def test_decode_failures_are_named_in_process_and_png_equals_its_jpeg_source(photos, tmp_path):
  folder, ids = photos
  with pytest.raises(prediction.UnreadableImageError, match="corrupt JPEG"):
    prediction.read_image(str(folder / "truncated.jpg"))
  with pytest.raises(prediction.UnreadableImageError, match="cannot read"):
    prediction.read_image(str(tmp_path / "missing.jpg"))
  _, decoded = prediction.read_image(str(folder / f"{ids[0]}.jpg"))
  np.testing.assert_array_equal(decoded, cv2.imread(str(folder / f"{ids[0]}.jpg"))[..., ::-1])
  buffer = io.BytesIO()
  Image.fromarray(decoded).save(buffer, format="PNG")
  np.testing.assert_array_equal(prediction.decode_image(buffer.getvalue()), decoded)


def test_nothing_readable_or_nothing_matched_is_a_one_line_error(tiny_run, photos, tmp_path):
  folder, _ = photos
  result = _run(f"--model_dir={tiny_run}", f"--input={folder}/*.txt", f"--output_dir={tmp_path}/out")
  assert result.returncode == 1
  assert "notes.txt: not a JPEG or PNG image" in result.stderr
  assert result.stderr.strip().splitlines()[-1] == (
    "error: none of the 1 input file(s) could be read (reasons above); nothing written"
  )
  result = _run(f"--model_dir={tiny_run}", f"--input={folder}/*.gif", f"--output_dir={tmp_path}/out")
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1] == f"error: no file matches --input={folder}/*.gif"
  result = _run(f"--saved_model={tmp_path}", "--flip", f"--input={folder}", f"--output_dir={tmp_path}/out")
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1].startswith("error: --scales, --flip and --weights need --model_dir")


def test_saved_model_answers_with_the_same_masks_as_the_keras_model(keras_outputs, photos, tiny_run, tmp_path):
  from inference import exporting  # The SavedModel export contract.

  _, keras_dir = keras_outputs
  folder, ids = photos
  _, model, _ = run_folder.load_run(tiny_run)
  exporting.export_saved_model(model, str(tmp_path / "saved_model"))
  result = _run(f"--saved_model={tmp_path / 'saved_model'}", f"--input={folder}/*", f"--output_dir={tmp_path}/out")
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"wrote {len(ids)} image(s)" in result.stdout
  for image_id in ids:
    _, palette, mask = _read_palette_png(tmp_path / "out" / f"{image_id}.png")
    np.testing.assert_array_equal(palette, voc.palette())
    _, _, keras_mask = _read_palette_png(keras_dir / f"{image_id}.png")
    assert mask.shape == keras_mask.shape
    logits = _logits(model, _photo(folder, image_id))
    _assert_is_argmax(mask, logits)
    _assert_is_argmax(keras_mask, logits)
