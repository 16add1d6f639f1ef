"""The stages' boundaries: what each imports, so that a TPU worker does not load the conversion engine and a
conversion worker does not load the model."""

import ast
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT


def _loaded_after(statement: str, *, packages: tuple[str, ...]) -> list[str]:
  """The top-level packages among `packages` that a fresh interpreter has loaded after running `statement`."""
  code = f"import sys; {statement}; print(sorted({{m.split('.')[0] for m in sys.modules}} & {set(packages)!r}))"
  result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  return ast.literal_eval(result.stdout.strip().splitlines()[-1])


def test_training_and_inference_import_no_beam():
  loaded = _loaded_after(
    "import trainer.train, inference.evaluation, inference.prediction, inference.exporting, inference.importing",
    packages=("apache_beam",),
  )
  assert loaded == []


def test_the_conversion_imports_no_model_code():
  """(TensorFlow itself loads Keras; the model code is ours.)"""
  loaded = _loaded_after("import preprocessing.make_tfrecords", packages=("deeplab", "trainer", "inference", "configs"))
  assert loaded == []


@pytest.mark.parametrize(
  "module",
  [
    "launch.gke",
    "launch.vertex_ai",
    "launch.dataflow",
    "launch.tpu_vm",
    "launch.local_workers",
    "contracts.console",
    "contracts.voc",
    "contracts.errors",
    "contracts.download",
  ],
)
def test_launchers_and_light_contracts_load_without_tensorflow(module):
  assert _loaded_after(f"import {module}", packages=("tensorflow", "apache_beam")) == []


def _imported_packages(folder: str) -> list[tuple[str, str]]:
  """(file name, top-level package) of every import in the folder's modules, functions' own imports included."""
  found = []
  for path in sorted((REPO_ROOT / folder).glob("*.py")):
    for node in ast.walk(ast.parse(path.read_text())):
      names = (
        [alias.name for alias in node.names]
        if isinstance(node, ast.Import)
        else [node.module]
        if isinstance(node, ast.ImportFrom) and node.module and not node.level
        else []
      )
      found.extend((path.name, name.split(".")[0]) for name in names)
  return found


# What each folder must not import: contracts/ is what every stage imports, deeplab/ the model both training and
# inference share; the stages import neither each other nor the launchers.
FORBIDDEN_IMPORTS = {
  "contracts": {"preprocessing", "deeplab", "trainer", "inference", "launch", "keras", "apache_beam"},
  "deeplab": {"preprocessing", "trainer", "inference", "launch", "apache_beam"},
  "preprocessing": {"deeplab", "trainer", "inference", "launch", "keras"},
  "trainer": {"preprocessing", "inference", "launch", "apache_beam"},
  "inference": {"preprocessing", "trainer", "launch", "apache_beam"},
}


@pytest.mark.parametrize("folder", sorted(FORBIDDEN_IMPORTS))
def test_each_folder_imports_only_what_it_may(folder):
  """contracts/ imports no stage (nor Keras); inference/ only deeplab/ and contracts/ of ours, never trainer/."""
  imports = _imported_packages(folder)
  assert imports
  for name, package in imports:
    assert package not in FORBIDDEN_IMPORTS[folder], f"{folder}/{name} imports {package}"


def test_command_line_modules_define_the_flags_and_libraries_none():
  """Flags live in the module that is run; the libraries it calls take plain arguments."""
  libraries = [
    path
    for folder in ("contracts", "deeplab", "preprocessing", "trainer", "inference")
    for path in (REPO_ROOT / folder).glob("*.py")
    if path.stem
    not in ("main", "make_tfrecords", "evaluate", "predict", "export", "import_model", "synthetic_voc", "__init__")
  ]
  assert libraries
  for path in libraries:
    text = path.read_text()
    assert "flags.DEFINE_" not in text and "FLAGS." not in text, f"{path.relative_to(REPO_ROOT)} defines or reads flags"
