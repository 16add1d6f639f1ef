"""Where a split's image/mask pairs are: the layouts data sets come in, listed before the Beam job starts.

- VOC (`--voc_root`): ImageSets/Segmentation/{split}.txt ids, JPEGImages/{id}.jpg, SegmentationClass/{id}.png
  (SegmentationClassAug/ for SBD's ids).
- Folders (`--images=GLOB --masks=TEMPLATE`): the images a glob finds (`**` descends into sub-folders), each
  paired with the mask the template names. The template's fields: {split}; {dir}, the image's folder below the
  glob's fixed part; {stem}, what the file name's first `*` matched (without the extension, where it took it);
  {name}, the file name. E.g. `camvid/{split}/*.png` with `camvid/{split}annot/{stem}.png`, or
  `cityscapes/leftImg8bit/{split}/**/*_leftImg8bit.png` with
  `cityscapes/gtFine/{split}/{dir}/{stem}_gtFine_labelIds.png`. An id is the image's path below the fixed part,
  without its extension (with it, where two images differ only by theirs): unique and stable. Files the glob finds
  that are another image's mask are masks, not images; masks that no image names are counted.
- Lists (`--pair_lists=TEMPLATE`): `image mask` lines, one file per split, paths relative to the list's folder or
  absolute; `--reroot=OLD=NEW` moves absolute paths of another machine (SegNet's `/SegNet/CamVid/...`) here.

Every path may be local or gs:// (tf.io.gfile).
"""

import collections
import dataclasses
import posixpath
import re

import tensorflow as tf

from contracts import voc

BAD_LIST_LINE = "bad_list_line"
DUPLICATE_ID = "duplicate_id"
SHARED_MASK = "shared_mask"
_WILDCARD = re.compile(r"[*?\[]")


class SourceError(ValueError):
  """A layout that cannot be listed (no such list, a glob or template that cannot work): one line for the user."""


@dataclasses.dataclass(frozen=True)
class PairFiles:
  """One pair to convert: its id and where its files are (the first of `masks` that exists is the mask)."""

  id: str
  image: str
  masks: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Listed:
  """A split as its layout lists it."""

  pairs: tuple[PairFiles, ...]  # distinct ids, in listing order
  refused: tuple[tuple[str, str, str], ...] = ()  # (id, reason, detail): repeats and unreadable list lines
  masks_without_image: tuple[str, ...] | None = None  # None where the layout cannot tell (VOC, lists)


def join(base: str, relative: str) -> str:
  """base/relative ('..' and '.' resolved, repeated '/' folded; relative alone when it is absolute), without
  breaking a scheme's '//'."""
  path = relative if relative.startswith("/") or "://" in relative or not base else f"{base}/{relative}"
  scheme, separator, rest = path.partition("://")
  if not separator:
    return posixpath.normpath(path)
  return f"{scheme}://{posixpath.normpath('/' + rest).lstrip('/')}"


def _below(path: str, root: str) -> str:
  """path relative to root when it lies below it, else path without its leading '/'."""
  root = join("", root)
  return path[len(root) + 1 :] if root not in ("", ".") and path.startswith(root + "/") else path.lstrip("/")


def _without_extension(path: str) -> str:
  root, _ = posixpath.splitext(path)
  return root


def _distinct(candidates: list[PairFiles]) -> tuple[list[PairFiles], list[tuple[str, str, str]]]:
  seen: dict[str, PairFiles] = {}
  refused = []
  for pair in candidates:
    if pair.id in seen:
      refused.append((pair.id, DUPLICATE_ID, f"listed more than once ({pair.image}); the first is written"))
    else:
      seen[pair.id] = pair
  return list(seen.values()), refused


# ------------------------------------------------------------------------------------------------------ VOC


def voc_pair(voc_root: str, image_id: str) -> PairFiles:
  """JPEGImages/{id}.jpg with SegmentationClass/{id}.png, else SBD's SegmentationClassAug/{id}.png (the official
  mask wins: SBD's have no void edges)."""
  return PairFiles(
    image_id, tf.io.gfile.join(voc_root, voc.IMAGE_DIR, f"{image_id}.jpg"), voc.mask_paths(voc_root, image_id)
  )


def available_splits(voc_root: str) -> list[str]:
  """Names of the id lists under ImageSets/Segmentation (empty when the folder is missing)."""
  try:
    found = tf.io.gfile.glob(tf.io.gfile.join(voc_root, voc.SPLIT_DIR, "*.txt"))
  except tf.errors.NotFoundError:
    return []
  return sorted(posixpath.basename(path).removesuffix(".txt") for path in found)


def voc_pairs(voc_root: str, split: str) -> Listed:
  pairs, refused = _distinct([voc_pair(voc_root, image_id) for image_id in voc.read_split_ids(voc_root, split)])
  return Listed(tuple(pairs), tuple(refused))


# -------------------------------------------------------------------------------------------------- folders


@dataclasses.dataclass(frozen=True)
class _Glob:
  base: str  # the fixed folder before the first wildcard
  regex: re.Pattern  # matches a path relative to base; group "stem": the file name's first `*`
  recursive: bool

  @classmethod
  def of(cls, pattern: str) -> "_Glob":
    parts = pattern.split("/")
    first = next((i for i, part in enumerate(parts) if _WILDCARD.search(part)), len(parts) - 1)
    base, relative = "/".join(parts[:first]) or ".", parts[first:]
    folders = "".join(_part_regex(part) + "/" if part != "**" else "(?:[^/]+/)*" for part in relative[:-1])
    name = relative[-1]
    if name == "**":
      raise SourceError(f"{pattern}: the glob must end with a file name pattern (e.g. **/*.png)")
    try:
      regex = re.compile(folders + _part_regex(name, capture_stem=True) + "$")
    except re.error as e:
      raise SourceError(f"{pattern}: not a glob this job reads ({e})") from None
    return cls(base, regex, recursive="**" in relative or len(relative) > 1)

  def find(self) -> list[str]:
    """Paths relative to base, sorted."""
    if not tf.io.gfile.isdir(self.base):
      return []
    if self.recursive:
      found = []
      for folder, _, files in tf.io.gfile.walk(self.base):
        below = folder[len(self.base) :].strip("/")
        found += [f"{below}/{name}" if below else name for name in files]
    else:
      found = [name.rstrip("/") for name in tf.io.gfile.listdir(self.base)]
    return sorted(path for path in found if self.regex.match(path))


def _part_regex(part: str, capture_stem: bool = False) -> str:
  out, captured, i = [], False, 0
  while i < len(part):
    c = part[i]
    if c == "*":
      out.append("(?P<stem>[^/]*)" if capture_stem and not captured else "[^/]*")
      captured = captured or capture_stem
    elif c == "?":
      out.append("[^/]")
    elif c == "[" and "]" in part[i + 1 :]:
      end = part.index("]", i + 1)
      out.append("[" + part[i + 1 : end].replace("!", "^", 1 if part[i + 1 : end].startswith("!") else 0) + "]")
      i = end
    else:
      out.append(re.escape(c))
    i += 1
  return "".join(out)


_FIELDS = re.compile(r"\{(\w*)\}")


def _check_template(template: str, allowed: tuple[str, ...], flag: str) -> None:
  unknown = sorted({f for f in _FIELDS.findall(template) if f not in allowed})
  if unknown:
    raise SourceError(
      f"{flag}={template}: unknown field(s) {', '.join('{' + f + '}' for f in unknown)}; it may "
      f"use {', '.join('{' + f + '}' for f in allowed)}"
    )


def check_templates(
  *, images: str | None = None, masks: str | None = None, pair_lists: str | None = None, splits: tuple[str, ...] = ()
) -> None:
  """SourceError for a field a template cannot have, or for several splits read from one place."""
  for flag, template, allowed in (
    ("--images", images, ("split",)),
    ("--masks", masks, ("split", "dir", "stem", "name")),
    ("--pair_lists", pair_lists, ("split",)),
  ):
    if template:
      _check_template(template, allowed, flag)
  per_split = images or pair_lists
  if per_split and len(splits) > 1 and "{split}" not in per_split:
    flag = "--images" if images else "--pair_lists"
    raise SourceError(
      f"{flag}={per_split} has no {{split}}: {len(splits)} splits ({', '.join(splits)}) would read "
      f"the same files; put {{split}} where the split's name goes, or convert one split"
    )


def folder_pairs(images: str, masks: str, split: str) -> Listed:
  """The pairs of `images` (a glob) and `masks` (a template), with {split} filled in."""
  glob = _Glob.of(images.replace("{split}", split))
  found = glob.find()
  if not found:
    raise SourceError(f"split {split}: --images={images} finds no file (in {glob.base})")
  mask_of = {}
  for relative in found:
    folder, name = posixpath.split(relative)
    match = glob.regex.match(relative)
    assert match is not None  # find() returns only the paths its regex matches.
    stem = match.groupdict().get("stem")
    if stem is None or match.end("stem") == len(relative):  # no `*`, or one that took the extension too
      stem = _without_extension(name if stem is None else stem)
    mask_of[relative] = join("", masks.format(split=split, dir=folder, stem=stem, name=name))
  images_found = [join(glob.base, relative) for relative in found]
  itself = next((path for relative, path in zip(found, images_found, strict=True) if mask_of[relative] == path), None)
  if itself:
    raise SourceError(f"--masks={masks} names the photo itself ({itself}) as its mask")
  mask_paths = set(mask_of.values())
  # Files that are another image's mask (a `_mask.png` beside its photo) are masks, not images.
  photos = [(relative, path) for relative, path in zip(found, images_found, strict=True) if path not in mask_paths]
  candidates = _with_ids([(relative, path, mask_of[relative]) for relative, path in photos])
  sharing = collections.Counter(pair.masks[0] for pair in candidates)
  refused = [
    (pair.id, SHARED_MASK, f"its mask {pair.masks[0]} is also another photo's (put {{dir}} or {{name}} in --masks)")
    for pair in candidates
    if sharing[pair.masks[0]] > 1
  ]
  pairs, repeats = _distinct([pair for pair in candidates if sharing[pair.masks[0]] == 1])
  return Listed(tuple(pairs), tuple(refused + repeats), _unpaired_masks(masks, split, mask_paths))


def _with_ids(found: list[tuple[str, str, str]]) -> list[PairFiles]:
  """(path below the root, photo, mask) -> pairs whose id is that path without its extension, or with it where two
  photos differ only by theirs."""
  stems = collections.Counter(_without_extension(relative) for relative in {relative for relative, _, _ in found})
  return [
    PairFiles(_without_extension(relative) if stems[_without_extension(relative)] == 1 else relative, image, (mask,))
    for relative, image, mask in found
  ]


def _unpaired_masks(masks: str, split: str, paired: set[str]) -> tuple[str, ...]:
  """The files the mask template could name that no image does."""
  pattern = masks.format(split=split, dir="**", stem="*", name="*")
  parts = [part if part == "**" or "**" not in part else part.replace("**", "*") for part in pattern.split("/")]
  glob = _Glob.of(join("", "/".join(parts)))  # folds an empty {dir}'s '//', keeps gs://
  return tuple(path for path in (join(glob.base, relative) for relative in glob.find()) if path not in paired)


# ---------------------------------------------------------------------------------------------------- lists


def parse_reroot(value: str | None) -> tuple[str, str] | None:
  """`OLD=NEW` -> (OLD, NEW); None for no value."""
  if not value:
    return None
  old, separator, new = value.partition("=")
  if not separator or not old or not new:
    raise SourceError(f"--reroot={value}: expected OLD=NEW, e.g. /SegNet/CamVid=data/camvid")
  return old.rstrip("/"), new.rstrip("/")


def list_pairs(pair_lists: str, split: str, reroot: tuple[str, str] | None = None) -> Listed:
  """The `image mask` lines of the split's list; an id is the image's path below the list's root (NEW of
  --reroot, else the list's folder), without its extension."""
  path = pair_lists.format(split=split)
  if not tf.io.gfile.exists(path):
    raise SourceError(f"split {split}: no list {path} (--pair_lists={pair_lists})")
  with tf.io.gfile.GFile(path) as f:
    lines = f.read().splitlines()
  folder = posixpath.dirname(path) or "."
  root = reroot[1] if reroot else folder
  found, refused = [], []
  for number, line in enumerate(lines, 1):
    tokens = line.split()
    if not tokens:
      continue
    if len(tokens) != 2:
      refused.append(
        (
          f"{posixpath.basename(path)}:{number}",
          BAD_LIST_LINE,
          f"expected `image mask`, got {len(tokens)} field(s): {line.strip()[:200]!r}",
        )
      )
      continue
    image, mask = (_placed(token, folder, reroot) for token in tokens)
    found.append((_below(image, root), image, mask))
  pairs, repeats = _distinct(_with_ids(found))
  return Listed(tuple(pairs), tuple(refused + repeats))


def _placed(token: str, folder: str, reroot: tuple[str, str] | None) -> str:
  if reroot and (token == reroot[0] or token.startswith(reroot[0] + "/")):
    return join(reroot[1], token[len(reroot[0]) :].lstrip("/"))
  if token.startswith("/") or "://" in token:
    return token
  return join(folder, token)
