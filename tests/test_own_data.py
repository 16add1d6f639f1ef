"""A user's own data as it comes: folder layouts (nested, suffix rules), list files with another machine's paths,
class-id masks with their own void values, colour masks through a colour table, label maps, photos in other
formats; bad inputs rejected with their reasons; pixel counts; and the real CamVid sample from its own layout."""

import io
import json
import pathlib
import subprocess
import sys

from absl import app
import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from contracts import schema
from contracts import shards
from contracts import voc
from preprocessing import make_tfrecords
from preprocessing import mask_encoding
from preprocessing import pairs
from preprocessing import sources
from tests.conftest import CAMVID_CLASSES
from tests.conftest import read_records
from tests.conftest import record_mask

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
CAMVID_VOID = 11


def _run(output_dir, *flags: str):
  return make_tfrecords.run(["make_tfrecords", f"--output_dir={output_dir}", *flags])


def _image(features: dict) -> np.ndarray:
  return tf.io.decode_image(features[schema.IMAGE_ENCODED], channels=3).numpy()


def _rejected(output_dir: pathlib.Path, split: str) -> dict[str, tuple[str, str]]:
  lines = (output_dir / f"{split}-rejected.jsonl").read_text().splitlines()
  return {r["id"]: (r["reason"], r["detail"]) for r in map(json.loads, lines)}


def _summary(output_dir: pathlib.Path, split: str) -> dict:
  return json.loads((output_dir / f"{split}-summary.json").read_text())


def _encode(array: np.ndarray, fmt: str = "PNG", palette: np.ndarray | None = None) -> bytes:
  image = Image.fromarray(array)
  if palette is not None:
    image.putpalette(palette.ravel().tolist())
  buffer = io.BytesIO()
  image.save(buffer, format=fmt)
  return buffer.getvalue()


def _write(path: pathlib.Path, data: bytes) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(data)


def _photo(rng, height: int, width: int) -> np.ndarray:
  return rng.integers(0, 256, (height, width, 3)).astype(np.uint8)


def _labels(rng, height: int, width: int, values) -> np.ndarray:
  """Blocks of the given values, so that every value appears (as class masks do), in random order."""
  values = list(values)
  blocks = np.array(values)[rng.permutation(np.arange(height * width) % len(values))]
  return blocks.reshape(height, width).astype(np.uint8)


def _names_file(folder: pathlib.Path, names) -> str:
  path = folder / "classes.txt"
  path.write_text("".join(f"{name}\n" for name in names))
  return str(path)


# -------------------------------------------------------------------------- folders: nested, repeated names


@pytest.fixture(scope="module")
def nested(tmp_path_factory):
  """photos/{split}/{seq}/{frame}.png with labels/{split}/{seq}/{frame}_L.png, grey class ids 0..3 and void 9;
  the same frame names in two sequences; one mask without a photo; one photo with a mask of another size."""
  root = tmp_path_factory.mktemp("nested")
  rng = np.random.default_rng(0)
  truth = {}
  for split, sequences in (("train", ("seq_a", "seq_b")), ("val", ("seq_c",))):
    for sequence in sequences:
      for frame in ("0001", "0002"):
        image, labels = _photo(rng, 30, 40), _labels(rng, 30, 40, [0, 1, 2, 3, 9])
        _write(root / "photos" / split / sequence / f"{frame}.png", _encode(image))
        _write(root / "labels" / split / sequence / f"{frame}_L.png", _encode(labels))
        truth[f"{sequence}/{frame}"] = (image, np.where(labels == 9, voc.IGNORE_LABEL, labels))
  _write(root / "labels" / "train" / "seq_a" / "0003_L.png", _encode(_labels(rng, 30, 40, [0, 1])))
  _write(root / "photos" / "train" / "seq_b" / "0004.png", _encode(_photo(rng, 30, 40)))
  _write(root / "labels" / "train" / "seq_b" / "0004_L.png", _encode(_labels(rng, 20, 40, [0, 1])))
  out = tmp_path_factory.mktemp("nested_records")
  summaries = _run(
    out,
    f"--images={root}/photos/{{split}}/**/*.png",
    f"--masks={root}/labels/{{split}}/{{dir}}/{{stem}}_L.png",
    f"--class_names={_names_file(root, ['background', 'road', 'tree', 'car'])}",
    "--void_values=9",
    "--max_rejected_fraction=1",
  )
  return root, out, truth, summaries


def test_nested_folders_keep_repeated_file_names_apart_by_their_path(nested):
  _, out, truth, _ = nested
  train, val = read_records(out, "train"), read_records(out, "val")
  assert sorted(train) == ["seq_a/0001", "seq_a/0002", "seq_b/0001", "seq_b/0002"]
  assert sorted(val) == ["seq_c/0001", "seq_c/0002"]
  for image_id, features in {**train, **val}.items():
    image, labels = truth[image_id]
    np.testing.assert_array_equal(_image(features), image, err_msg=image_id)
    np.testing.assert_array_equal(record_mask(features), labels, err_msg=image_id)  # 9 read as void, the rest as is


def test_nested_folders_count_masks_without_a_photo_and_reject_a_size_mismatch(nested):
  _, out, _, summaries = nested
  rejected = _rejected(out, "train")
  assert list(rejected) == ["seq_b/0004"] and rejected["seq_b/0004"][0] == pairs.SIZE_MISMATCH
  summary = _summary(out, "train")
  assert summary["listed"] == 5 and summary["written"] == 4 and summary["rejected"] == 1
  assert summary["masks_without_image"] == 1
  assert summary["masks_without_image_examples"][0].endswith("labels/train/seq_a/0003_L.png")
  assert summaries["val"].masks_without_image == 0


def test_pixel_counts_per_class_are_the_masks_counts(nested):
  _, out, truth, _ = nested
  for split, ids in (
    ("train", ["seq_a/0001", "seq_a/0002", "seq_b/0001", "seq_b/0002"]),
    ("val", ["seq_c/0001", "seq_c/0002"]),
  ):
    stacked = np.stack([truth[image_id][1] for image_id in ids])
    summary = _summary(out, split)
    assert summary["class_pixels"] == {
      name: int((stacked == index).sum()) for index, name in enumerate(["background", "road", "tree", "car"])
    }
    assert summary["void_pixels"] == int((stacked == voc.IGNORE_LABEL).sum()) > 0
    assert summary["unknown_to_void_pixels"] == 0
    labelled = [int((mask != voc.IGNORE_LABEL).sum()) for mask in stacked]  # median frequency's denominators
    assert summary["class_image_pixels"] == {
      name: sum(n for mask, n in zip(stacked, labelled, strict=True) if (mask == index).any())
      for index, name in enumerate(["background", "road", "tree", "car"])
    }
    assert not (out / f"{split}-pixels.json").exists()  # folded into the summary


# -------------------------------------------------------------------------- folders: a suffix in one folder


def test_masks_beside_their_photos_are_not_taken_for_photos(tmp_path):
  rng = np.random.default_rng(1)
  expected = {}
  for name in ("a", "b"):
    image, labels = _photo(rng, 24, 32), _labels(rng, 24, 32, [0, 1, 2])
    _write(tmp_path / "data" / f"{name}.png", _encode(image))
    _write(tmp_path / "data" / f"{name}_mask.png", _encode(labels))
    expected[name] = labels
  _write(tmp_path / "data" / "c.tif", _encode(_photo(rng, 24, 32), "TIFF"))  # a TIFF photo, its mask another ext
  expected["c"] = _labels(rng, 24, 32, [1, 2])
  _write(tmp_path / "data" / "c_mask.png", _encode(expected["c"]))
  out = tmp_path / "out"
  summaries = _run(
    out,
    f"--images={tmp_path}/data/*.*",
    f"--masks={tmp_path}/data/{{stem}}_mask.png",
    "--num_classes=3",
    "--splits=all",
  )
  records = read_records(out, "all")
  assert sorted(records) == ["a", "b", "c"] and summaries["all"].rejected == 0
  for image_id, labels in expected.items():
    np.testing.assert_array_equal(record_mask(records[image_id]), labels)
  assert records["c"][schema.IMAGE_FORMAT] == b"png"  # the TIFF, stored as lossless PNG
  assert (out / shards.CLASS_NAMES_FILE).read_text().split() == ["background", "class_1", "class_2"]


def test_two_photos_that_differ_only_by_extension_are_two_records_and_never_share_a_mask(tmp_path):
  rng = np.random.default_rng(2)
  _write(tmp_path / "img" / "x.jpg", _encode(_photo(rng, 16, 16), "JPEG"))
  _write(tmp_path / "img" / "x.png", _encode(_photo(rng, 16, 16)))
  for name in ("x.jpg", "x.png"):
    _write(tmp_path / "ann" / f"{name}.png", _encode(_labels(rng, 16, 16, [0, 1])))
  _write(tmp_path / "ann" / "x.png", _encode(_labels(rng, 16, 16, [0, 1])))
  common = [f"--images={tmp_path}/img/*", "--num_classes=2", "--splits=train", "--max_rejected_fraction=1"]
  _run(tmp_path / "out", *common, f"--masks={tmp_path}/ann/{{name}}.png")
  assert sorted(read_records(tmp_path / "out", "train")) == ["x.jpg", "x.png"]  # nothing merged
  # A template that gives both photos the same mask would label one of them wrongly: both are refused, named.
  _run(tmp_path / "shared", *common, f"--masks={tmp_path}/ann/{{stem}}.png")
  rejected = _rejected(tmp_path / "shared", "train")
  assert {image_id: reason for image_id, (reason, _) in rejected.items()} == {
    "x.jpg": pairs.SHARED_MASK,
    "x.png": pairs.SHARED_MASK,
  }


def test_a_mask_template_that_names_the_photo_itself_is_refused(tmp_path):
  _write(tmp_path / "img" / "a.png", _encode(_photo(np.random.default_rng(0), 8, 8)))
  with pytest.raises(Exception, match="names the photo itself"):
    _run(
      tmp_path / "out",
      f"--images={tmp_path}/img/*.png",
      f"--masks={tmp_path}/img/{{stem}}.png",
      "--num_classes=2",
      "--splits=train",
    )


def test_a_void_value_that_is_a_class_is_refused(tmp_path):
  with pytest.raises(app.UsageError, match="--void_values: 2 is class 'class_2' of the 3 classes"):
    _run(
      tmp_path / "out",
      f"--images={tmp_path}/{{split}}/*.png",
      f"--masks={tmp_path}/{{stem}}.png",
      "--num_classes=3",
      "--void_values=2",
    )


# --------------------------------------------------------------------------------------------- list files


@pytest.fixture(scope="module")
def listed(tmp_path_factory):
  """SegNet-style lists: absolute paths of another machine (/SegNet/Data/...), re-rooted; a relative line; a line
  naming a missing photo; a malformed line; a repeated line."""
  root = tmp_path_factory.mktemp("listed")
  rng = np.random.default_rng(3)
  truth = {}
  lines = []
  for name in ("f1", "f2", "f3"):
    image, labels = _photo(rng, 20, 28), _labels(rng, 20, 28, [0, 1, 2, 11])
    _write(root / "train" / f"{name}.png", _encode(image))
    _write(root / "trainannot" / f"{name}.png", _encode(labels))
    truth[f"train/{name}"] = np.where(labels == 11, voc.IGNORE_LABEL, labels)
    lines.append(f"/SegNet/Data/train/{name}.png /SegNet/Data/trainannot/{name}.png")
  lines[2] = "train/f3.png trainannot/f3.png"  # relative to the list's folder
  lines += ["/SegNet/Data/train/missing.png /SegNet/Data/trainannot/missing.png", "only_one_path.png", lines[0]]
  (root / "train.txt").write_text("\n".join(lines) + "\n")
  out = tmp_path_factory.mktemp("listed_records")
  summaries = _run(
    out,
    f"--pair_lists={root}/{{split}}.txt",
    f"--reroot=/SegNet/Data={root}",
    "--splits=train",
    "--num_classes=3",
    "--void_values=11",
    "--max_rejected_fraction=1",
  )
  return root, out, truth, summaries


def test_list_files_with_another_machines_paths_are_rerooted(listed):
  _, out, truth, _ = listed
  records = read_records(out, "train")
  assert sorted(records) == sorted(truth)
  for image_id, labels in truth.items():
    np.testing.assert_array_equal(record_mask(records[image_id]), labels)


def test_list_files_reject_missing_files_bad_lines_and_repeats_with_reasons(listed):
  _, out, _, summaries = listed
  rejected = _rejected(out, "train")
  assert {image_id: reason for image_id, (reason, _) in rejected.items()} == {
    "train/missing": pairs.MISSING_IMAGE,
    "train.txt:5": pairs.BAD_LIST_LINE,
    "train/f1": pairs.DUPLICATE_ID,
  }
  assert "missing.png" in rejected["train/missing"][1]
  assert summaries["train"].listed == 6 and summaries["train"].written == 3


# --------------------------------------------------------------------------------- colour masks and maps

COLOURS = {"background": (0, 0, 0), "road": (128, 64, 128), "tree": (128, 128, 0), "car": (64, 0, 128)}
VOID_COLOUR = (255, 255, 255)


@pytest.fixture(scope="module")
def coloured(tmp_path_factory):
  """RGB colour masks and palette PNGs whose indices are not the class ids (read by their colours), with a CSV
  colour table that has a header and a void row; one mask with a colour outside the table."""
  root = tmp_path_factory.mktemp("coloured")
  table = root / "colours.csv"
  table.write_text(
    "name,r,g,b\n" + "".join(f"{n},{r},{g},{b}\n" for n, (r, g, b) in COLOURS.items()) + "void,255,255,255\n"
  )
  rng = np.random.default_rng(4)
  colours = np.array(list(COLOURS.values()) + [VOID_COLOUR], np.uint8)
  truth = {}
  for name, kind in (("rgb", "rgb"), ("palette", "palette"), ("odd", "rgb")):
    image, indices = _photo(rng, 18, 22), _labels(rng, 18, 22, range(5))
    _write(root / "img" / f"{name}.jpg", _encode(image, "JPEG"))
    if kind == "rgb":
      picture = colours[indices]
      if name == "odd":
        picture[0, :3] = (1, 2, 3)
      mask = _encode(picture)
    else:  # palette index i+7 has class i's colour: an index reader would get it wrong
      palette = np.zeros((256, 3), np.uint8)
      palette[7:12] = colours
      mask = _encode((indices + 7).astype(np.uint8), palette=palette)
    _write(root / "ann" / f"{name}.png", mask)
    truth[name] = np.where(indices == 4, voc.IGNORE_LABEL, indices)
  return root, table, truth


def test_colour_masks_and_palette_pngs_are_read_through_the_colour_table(coloured, tmp_path):
  root, table, truth = coloured
  summaries = _run(
    tmp_path,
    f"--images={root}/img/*.jpg",
    f"--masks={root}/ann/{{stem}}.png",
    f"--colour_table={table}",
    "--splits=train",
    "--max_rejected_fraction=1",
  )
  records = read_records(tmp_path, "train")
  assert sorted(records) == ["palette", "rgb"]
  for image_id in records:
    np.testing.assert_array_equal(record_mask(records[image_id]), truth[image_id])
  reason, detail = _rejected(tmp_path, "train")["odd"]
  assert reason == pairs.UNKNOWN_MASK_COLOUR and "(1, 2, 3)" in detail
  assert (tmp_path / shards.CLASS_NAMES_FILE).read_text().split() == list(COLOURS)
  assert shards.read_class_colours(str(tmp_path / shards.CLASS_COLOURS_FILE)) == tuple(COLOURS.values())
  assert summaries["train"].rejected == 1


def test_unknown_colours_become_void_when_asked_and_are_counted(coloured, tmp_path):
  root, table, truth = coloured
  summaries = _run(
    tmp_path,
    f"--images={root}/img/odd.jpg",
    f"--masks={root}/ann/{{stem}}.png",
    f"--colour_table={table}",
    "--splits=train",
    "--unknown_to_void",
  )
  [features] = read_records(tmp_path, "train").values()
  expected = truth["odd"].copy()
  expected[0, :3] = voc.IGNORE_LABEL
  np.testing.assert_array_equal(record_mask(features), expected)
  assert summaries["train"].unknown_to_void_pixels == 3
  assert summaries["train"].void_pixels == int((expected == voc.IGNORE_LABEL).sum())


def test_a_label_map_merges_reorders_and_drops_classes(tmp_path):
  rng = np.random.default_rng(5)
  raw = _labels(rng, 20, 20, [0, 5, 6, 7, 30])
  _write(tmp_path / "img" / "a.png", _encode(_photo(rng, 20, 20)))
  _write(tmp_path / "ann" / "a.png", _encode(raw))
  label_map = tmp_path / "map.txt"
  label_map.write_text("# raw -> class\n5 -> vehicle\n6: vehicle\n7 = background\n0 void\n")
  names = _names_file(tmp_path, ["background", "vehicle"])
  common = [
    f"--images={tmp_path}/img/*.png",
    f"--masks={tmp_path}/ann/{{stem}}.png",
    f"--class_names={names}",
    f"--label_map={label_map}",
    "--splits=train",
  ]
  summaries = _run(tmp_path / "out", *common, "--max_rejected_fraction=1")
  reason, detail = _rejected(tmp_path / "out", "train")["a"]
  assert reason == pairs.LABEL_OUT_OF_RANGE and "30" in detail and "label map" in detail
  assert summaries["train"].written == 0

  (tmp_path / "map.json").write_text(json.dumps({"5": "vehicle", "6": 1, "7": "background", "0": "void", "30": 255}))
  _run(tmp_path / "out2", *common[:3], f"--label_map={tmp_path}/map.json", "--splits=train")
  [features] = read_records(tmp_path / "out2", "train").values()
  expected = np.select([np.isin(raw, [5, 6]), raw == 7], [1, 0], voc.IGNORE_LABEL)
  np.testing.assert_array_equal(record_mask(features), expected)


def test_a_label_map_of_colours_reads_nested_colour_masks_with_names_of_their_own(coloured, tmp_path):
  root, _, truth = coloured
  for name in ("rgb", "palette"):  # the same masks, one folder deeper, beside photos of other names
    _write(tmp_path / "ann" / "city" / f"{name}.png", (root / "ann" / f"{name}.png").read_bytes())
    _write(tmp_path / "img" / "city" / f"{name}.jpg", (root / "img" / f"{name}.jpg").read_bytes())
  label_map = tmp_path / "map.txt"  # road and car merged into "vehicle way", tree dropped, white void
  label_map.write_text("0,0,0 background\n#804080 way\n64,0,128 way\n128,128,0 void\n255 255 255 -> void\n")
  names = _names_file(tmp_path, ["background", "way"])
  summaries = _run(
    tmp_path / "out",
    f"--images={tmp_path}/img/**/*.jpg",
    f"--masks={tmp_path}/ann/{{dir}}/{{stem}}.png",
    f"--class_names={names}",
    f"--label_map={label_map}",
    "--splits=train",
  )
  records = read_records(tmp_path / "out", "train")
  assert sorted(records) == ["city/palette", "city/rgb"] and summaries["train"].rejected == 0
  for name in ("rgb", "palette"):
    expected = np.select([truth[name] == 0, np.isin(truth[name], [1, 3])], [0, 1], voc.IGNORE_LABEL)
    np.testing.assert_array_equal(record_mask(records[f"city/{name}"]), expected)


def test_class_ids_outside_the_classes_are_rejected_naming_the_values(tmp_path):
  rng = np.random.default_rng(6)
  _write(tmp_path / "img" / "a.png", _encode(_photo(rng, 10, 10)))
  _write(tmp_path / "ann" / "a.png", _encode(_labels(rng, 10, 10, [0, 1, 4, 9])))
  _run(
    tmp_path / "out",
    f"--images={tmp_path}/img/*.png",
    f"--masks={tmp_path}/ann/{{stem}}.png",
    "--num_classes=3",
    "--splits=train",
    "--max_rejected_fraction=1",
  )
  reason, detail = _rejected(tmp_path / "out", "train")["a"]
  assert reason == pairs.LABEL_OUT_OF_RANGE and "4, 9" in detail and "0..2" in detail


@pytest.mark.parametrize(
  "text, names, colours, void",
  [
    (
      "sky 128 128 128\nroad 128 64 128\nvoid 0 0 0\n",
      ("sky", "road"),
      ((128, 128, 128), (128, 64, 128)),
      ((0, 0, 0),),
    ),
    (
      "64 128 64\tAnimal\n192 0 128\tArchway\n0 0 0\tVoid\n",
      ("Animal", "Archway"),
      ((64, 128, 64), (192, 0, 128)),
      ((0, 0, 0),),
    ),  # CamVid's own label_colors.txt: the colour first
    ('{"sky": [128, 128, 128], "road": "#804080"}', ("sky", "road"), ((128, 128, 128), (128, 64, 128)), ()),
    ("background #000000\nroad,#804080\n", ("background", "road"), ((0, 0, 0), (128, 64, 128)), ()),
    (
      '[{"name": "traffic light", "color": [250, 170, 30]}, {"name": "ignore", "colour": [0, 0, 0]}]',
      ("traffic light",),
      ((250, 170, 30),),
      ((0, 0, 0),),
    ),
  ],
)
def test_colour_tables_in_the_forms_people_have(text, names, colours, void):
  table = mask_encoding.parse_colour_table(text, "table")
  assert (table.names, table.colours, table.void_colours) == (names, colours, void)


@pytest.mark.parametrize(
  "text, message",
  [
    ("sky 128 128\n", "table:1: 'sky 128 128' is not a name and a colour"),
    ("sky 1 2 3\nroad 1 2 3\n", "colour(s) (1, 2, 3) given to more than one row"),
    ("sky 1 2 3\nsky 4 5 6\n", "class names repeat: sky"),
    ("sky 1 2 300\n", "is not a name and a colour"),
    ("name,r,g,b\nsky 1 2 3\nroad\n", "table:3: 'road' is not a name and a colour"),
  ],
)
def test_bad_colour_tables_are_refused_naming_the_line(text, message):
  with pytest.raises(mask_encoding.EncodingError, match=message.replace("(", r"\(").replace(")", r"\)")):
    mask_encoding.parse_colour_table(text, "table")


# ----------------------------------------------------------------------------------------- the command line


@pytest.mark.parametrize(
  "extra, message",
  [
    (["--images=x/*.png"], "--images and --masks go together"),
    (["--images=x/{split}/*.png", "--masks=y/{stem}.png"], "name your data set's classes"),
    (["--images=x/*.png", "--masks=y/{stem}.png", "--num_classes=3"], r"has no \{split\}: 2 splits"),
    (["--images=x/{split}/*.png", "--masks=y/{base}.png", "--num_classes=3"], r"unknown field\(s\) \{base\}"),
    (["--pair_lists=l/{split}.txt", "--reroot=/only", "--num_classes=3"], "--reroot=/only: expected OLD=NEW"),
    (["--voc_root=v", "--images=x/{split}/*.png", "--masks=m"], "given: --voc_root, --images"),
    (
      ["--images=x/{split}/*.png", "--masks=y/{stem}.png", "--colour_table=t.csv", "--void_values=0"],
      "--class_names and --void_values go with class-id masks",
    ),
    (["--images=x/{split}/*.png", "--masks=y/{stem}.png", "--void_values=a"], "--void_values"),
  ],
)
def test_bad_data_flags_are_refused_before_any_work(tmp_path, extra, message):
  with pytest.raises(app.UsageError, match=message) as refused:
    _run(tmp_path / "o", *extra)
  assert refused.value.exitcode == 2 and not (tmp_path / "o").exists()


def test_the_command_refuses_them_in_one_line_with_exit_code_2(tmp_path):
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "preprocessing.make_tfrecords",
      f"--output_dir={tmp_path}/o",
      "--images=x/{split}/*.png",
      "--masks=y/{stem}.png",
    ],
    cwd=REPO_ROOT,
    capture_output=True,
    text=True,
    check=False,
  )
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1].startswith("make_tfrecords: error: name your data set's classes")


def test_a_glob_that_finds_nothing_says_where_it_looked(tmp_path):
  with pytest.raises(Exception, match="finds no file"):
    _run(tmp_path / "o", f"--images={tmp_path}/{{split}}/*.png", f"--masks={tmp_path}/{{stem}}.png", "--num_classes=2")


def test_sources_join_keeps_schemes_and_folds_dots():
  assert sources.join("gs://bucket/data", "../x/./y.png") == "gs://bucket/x/y.png"
  assert sources.join("data/lists", "/abs/z.png") == "/abs/z.png"
  assert sources.join("", "a//b/../c.png") == "a/c.png"


# ------------------------------------------------------------------------------------- real CamVid, as it comes


@pytest.fixture(scope="module")
def camvid_converted(camvid, tmp_path_factory):
  out = tmp_path_factory.mktemp("camvid_records")
  names = _names_file(tmp_path_factory.mktemp("camvid_names"), CAMVID_CLASSES)
  summaries = _run(
    out,
    f"--pair_lists={camvid}/{{split}}.txt",
    f"--reroot=/SegNet/CamVid={camvid}",
    f"--class_names={names}",
    f"--void_values={CAMVID_VOID}",
  )
  return out, summaries


def test_real_camvid_converts_from_its_own_lists_every_pair_written_11_as_void(camvid, camvid_converted):
  out, summaries = camvid_converted
  for split, count in (("train", 367), ("val", 101)):
    assert summaries[split].listed == summaries[split].written == count and summaries[split].rejected == 0
    sources_masks = [
      camvid / line.split()[1].replace("/SegNet/CamVid/", "")
      for line in (camvid / f"{split}.txt").read_text().splitlines()
      if line.strip()
    ]
    raw = np.stack([np.asarray(Image.open(path)) for path in sources_masks])
    summary = _summary(out, split)
    assert summary["class_pixels"] == {name: int((raw == index).sum()) for index, name in enumerate(CAMVID_CLASSES)}
    assert summary["void_pixels"] == int((raw == CAMVID_VOID).sum()) > 0
  records = read_records(out, "val")
  image_id = sorted(records)[0]
  assert image_id.startswith("val/") and records[image_id][schema.IMAGE_FORMAT] == b"png"
  source = np.asarray(Image.open(camvid / "valannot" / f"{image_id.split('/')[1]}.png"))
  np.testing.assert_array_equal(record_mask(records[image_id]), np.where(source == CAMVID_VOID, 255, source))
  assert records[image_id][schema.IMAGE_ENCODED] == (camvid / f"{image_id}.png").read_bytes()  # stored as it is
  assert (out / shards.CLASS_NAMES_FILE).read_text().split() == list(CAMVID_CLASSES)


def test_real_camvid_folders_give_the_same_records_as_its_lists(camvid, camvid_converted, tmp_path):
  out, _ = camvid_converted
  names = _names_file(tmp_path, CAMVID_CLASSES)
  _run(
    tmp_path / "folders",
    f"--images={camvid}/{{split}}/*.png",
    f"--masks={camvid}/{{split}}annot/{{stem}}.png",
    f"--class_names={names}",
    f"--void_values={CAMVID_VOID}",
    "--splits=val",
  )
  from_lists = {image_id.split("/")[1]: f for image_id, f in read_records(out, "val").items()}
  from_folders = read_records(tmp_path / "folders", "val")
  assert sorted(from_folders) == sorted(from_lists)
  for image_id, features in from_folders.items():
    assert features[schema.MASK_ENCODED] == from_lists[image_id][schema.MASK_ENCODED]


def test_class_ids_saved_as_grey_rgb_are_read_as_ids():
  ids = np.array([[0, 1, 2], [11, 3, 1]], np.uint8)
  decoded = mask_encoding.decode(
    _encode(np.repeat(ids[..., None], 3, axis=-1)), mask_encoding.MaskEncoding(num_classes=4, void_values=(11,))
  )
  np.testing.assert_array_equal(decoded.class_ids, np.where(ids == 11, voc.IGNORE_LABEL, ids))
  # A VOC colour mask that happens to be grey (background and car, 128,128,128) stays VOC's.
  voc_grey = voc.colorize(np.array([[0, 7]], np.uint8))
  decoded = mask_encoding.decode(_encode(voc_grey), mask_encoding.MaskEncoding(num_classes=21))
  np.testing.assert_array_equal(decoded.class_ids, [[0, 7]])
