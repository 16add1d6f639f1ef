"""Every file, folder and module of this repository that the README, a docstring or a comment names exists: a path
left behind by a move is a wrong instruction to the next reader."""

from pathlib import Path
import re

import pytest

from tests.conftest import REPO_ROOT
from tests.conftest import SHARED_DIR

PACKAGES = ("contracts", "preprocessing", "deeplab", "trainer", "inference", "configs", "launch", "tests", "benchmarks")
# A path: a package folder, then path characters; a module: a package, then dotted names ("trainer.train").
PATH = re.compile(rf"(?<![\w./-])((?:\.\./shared/|(?:{'|'.join(PACKAGES)})/)[\w./*{{}}-]*)")
MODULE = re.compile(rf"(?<![\w./-])((?:{'|'.join(PACKAGES)})(?:\.[a-z_][a-z0-9_]*)+)")
PLACEHOLDER = re.compile(r"[A-Z]{3,}|[{}]")  # configs/NAME.py, data/{split}-*.tfrecord: a pattern, not a path.


def _texts() -> list[Path]:
  texts = [REPO_ROOT / "README.md", REPO_ROOT / "Makefile", REPO_ROOT / "setup.py"]
  texts += [path for package in PACKAGES for path in (REPO_ROOT / package).rglob("*.py")]
  texts += [REPO_ROOT / "launch" / "Dockerfile"]
  return [path for path in texts if path.exists() and "__pycache__" not in path.parts and path != pathlib_self()]


def pathlib_self() -> Path:
  return Path(__file__).resolve()  # This file's own examples name what does not exist, on purpose.


def _exists(name: str) -> bool:
  name = name.rstrip(".,:;)")
  if name.startswith("../shared/"):
    root = SHARED_DIR
    if not root.exists():
      return True  # A clone without ../shared: nothing to check against (CI has it).
    name = name[len("../shared/") :]
  else:
    root = REPO_ROOT
  if "*" in name:
    return any(root.glob(name))
  module, _, attribute = name.rpartition(".")
  if attribute.isidentifier() and (root / (module + ".py")).exists():
    return True  # contracts/errors.UserError: a module's attribute.
  return (root / name).exists() or (name.endswith("_") and any(root.glob(name + "*")))  # configs/camvid_*


def _module_exists(dotted: str) -> bool:
  """`a.b.c` names a module or package, or an attribute defined in one (`trainer.train.compile_model`)."""
  parts = dotted.split(".")
  for length in range(len(parts), 1, -1):  # At least package.module: what follows may be attributes.
    path = REPO_ROOT.joinpath(*parts[:length])
    if path.with_suffix(".py").exists() or path.is_dir():
      return True
  return False


RENAMED_FROM = re.compile(r"`? ->")  # "`old/path.py` -> `new/path.py`": a rename names the old path on purpose.


def _named(pattern: re.Pattern, text: str) -> set[str]:
  return {
    match.group(1)
    for match in pattern.finditer(text)
    if not PLACEHOLDER.search(match.group(1)) and not RENAMED_FROM.match(text, match.end())
  }


def test_the_scan_finds_what_the_files_name():
  """The patterns see a path in a sentence and a module in a command (a scan that matches nothing passes anything)."""
  text = (
    "see trainer/train.py, and run python -m inference.evaluate --flip; configs/NAME.py is a pattern; "
    "`trainer/old.py` -> `trainer/augment.py`"
  )
  assert _named(PATH, text) == {"trainer/train.py", "trainer/augment.py"}
  assert _named(MODULE, text) == {"inference.evaluate"}
  assert not _exists("trainer/no_such_module.py") and _exists("trainer/train.py.")
  assert _exists("trainer/train.compile_model") and not _exists("trainer/no_such_module.compile_model")
  assert not _module_exists("trainer.no_such_module") and _module_exists("trainer.train.compile_model")


@pytest.mark.parametrize("path", _texts(), ids=lambda path: str(path.relative_to(REPO_ROOT)))
def test_every_repository_path_named_exists(path):
  text = path.read_text()
  missing = sorted(name for name in _named(PATH, text) if not _exists(name))
  missing += sorted(name for name in _named(MODULE, text) if not _module_exists(name))
  assert not missing, f"{path.relative_to(REPO_ROOT)} names what does not exist: {missing}"
