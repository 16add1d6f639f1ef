"""How a data set's masks encode its classes, and their decoding into class ids (255 = void).

Two encodings, as data sets come:
- class ids: each pixel's value (grayscale, or a palette PNG's index) is its class; `void_values` name the values
  that mean "not labelled" (VOC's 255, CamVid's 11, ...). RGB masks in this encoding are read in VOC's colours,
  or, where they are not VOC's and every pixel is grey, by their grey values.
- colours: each class is a colour of a colour table; palette PNGs are read by their colours, not their indices.
A label map (raw value or colour -> class id or void) merges, reorders and drops classes; with one, a value the
map does not name is unknown. A value outside the classes, or a colour outside the table, rejects its pair with
the values named, or (`unknown_to_void`) becomes void and is counted.

Files: a colour table is a text, CSV or JSON file of a name and a colour per class, in class-id order (rows named
void, ignore, unlabeled or unlabelled mark void colours instead); a label map is a JSON object or a text file of
`RAW TARGET` lines, RAW a value or a colour (`r,g,b` or `#rrggbb`), TARGET a class id, a class name or `void`.
"""

import dataclasses
import io
import json
import re

import numpy as np
from PIL import Image

from contracts import voc

VOID_NAMES = ("void", "ignore", "unlabeled", "unlabelled")

_ID_MODES = ("P", "L", "I", "I;16", "I;16B", "I;16L")  # pixel values are class ids (a palette's indices)
_COLOUR_MODES = ("RGB", "RGBA")
_UNKNOWN = -1


class EncodingError(ValueError):
  """A colour table or label map that cannot be read (a one-line message naming the file and the line)."""


class MaskValueError(ValueError):
  """A mask with values outside the encoding (the message names them); `colours`: they are colours."""

  def __init__(self, message: str, colours: bool):
    super().__init__(message)
    self.colours = colours


Colour = tuple[int, int, int]


def pack(colour) -> int:
  r, g, b = (int(v) for v in colour)
  return (r << 16) | (g << 8) | b


def unpack(packed: int) -> Colour:
  return (packed >> 16) & 255, (packed >> 8) & 255, packed & 255


@dataclasses.dataclass(frozen=True)
class MaskEncoding:
  """What a mask's pixels mean. Picklable: Beam ships it to the workers."""

  num_classes: int
  colours: tuple[Colour, ...] | None = None  # the colour table's class colours in id order; None: masks hold ids
  void_values: tuple[int, ...] = (voc.IGNORE_LABEL,)  # raw ids (or packed colours) that mean void
  label_map: tuple[tuple[int, int], ...] = ()  # (raw id or packed colour, class id or 255); empty: none
  unknown_to_void: bool = False

  @property
  def by_colour(self) -> bool:
    return self.colours is not None

  def describe(self) -> str:
    kind = (
      "class ids"
      if not self.by_colour
      else f"colours of a {len(self.colours)}-class table"
      if self.colours
      else "colours"
    )
    void = ", ".join(_raw_name(v, self.by_colour) for v in self.void_values) or "none"
    mapped = f", a label map of {len(self.label_map)} entries" if self.label_map else ""
    unknown = "void (counted)" if self.unknown_to_void else "rejects its pair"
    return f"masks hold {kind}{mapped}; void: {void}; an unknown value {unknown}"

  def lookup(self) -> dict[int, int]:
    """Raw value (id, or packed colour) -> class id or 255, for every raw value the encoding knows."""
    if self.label_map:  # its own entries win over the void values
      return {value: voc.IGNORE_LABEL for value in self.void_values} | dict(self.label_map)
    if self.colours is not None:  # by_colour
      table = {pack(colour): class_id for class_id, colour in enumerate(self.colours)}
    else:
      table = {value: value for value in range(self.num_classes)}
    return table | {value: voc.IGNORE_LABEL for value in self.void_values}


def _raw_name(value: int, by_colour: bool) -> str:
  return str(unpack(value)) if by_colour else str(value)


@dataclasses.dataclass(frozen=True)
class DecodedMask:
  class_ids: np.ndarray  # uint8 [H, W], 255 = void
  unknown_pixels: int  # pixels of unknown values made void (unknown_to_void)


def decode(data: bytes, encoding: MaskEncoding) -> DecodedMask:
  """Class ids of an image file holding a mask. Raises MaskValueError for values the encoding does not know
  (unless unknown_to_void), ValueError for a mode masks cannot have, OSError for a damaged file."""
  with Image.open(io.BytesIO(data)) as image:
    mode = image.mode
    if encoding.by_colour:
      if mode not in _ID_MODES + _COLOUR_MODES + ("LA", "PA"):
        raise ValueError(f"a mode {mode} image; colour masks are RGB(A), palette or grayscale")
      rgb = np.asarray(image.convert("RGB"))
      raw = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    elif mode in ("LA", "PA"):
      raw = np.asarray(image)[..., 0]
    elif mode in _ID_MODES:
      raw = np.asarray(image)
    elif mode in _COLOUR_MODES:
      rgb = np.asarray(image)[..., :3]
      try:
        raw = voc_colours_to_ids(rgb)
      except MaskValueError:
        if not ((rgb[..., 0] == rgb[..., 1]) & (rgb[..., 1] == rgb[..., 2])).all():
          raise
        raw = rgb[..., 0]  # class ids saved as grey RGB
    else:
      raise ValueError(f"a mode {mode} image; masks are palette (P), grayscale (L, I;16) or RGB(A) colour")
  return map_values(raw, encoding)


def map_values(raw: np.ndarray, encoding: MaskEncoding) -> DecodedMask:
  """Raw values (ids or packed colours) -> class ids; MaskValueError naming the values the encoding lacks."""
  table = encoding.lookup()
  if raw.dtype == np.uint8:  # the usual case: a 256-entry lookup table, ~10x faster than np.unique's sort
    lut = np.full(256, _UNKNOWN, np.int16)
    for value, class_id in table.items():
      if 0 <= value < 256:
        lut[value] = class_id
    mapped = lut[raw]
    values = None
  else:
    values, inverse = np.unique(raw.ravel(), return_inverse=True)
    mapped = np.array([table.get(int(v), _UNKNOWN) for v in values], np.int16)[inverse].reshape(raw.shape)
  unknown = mapped == _UNKNOWN
  unknown_pixels = int(unknown.sum())
  if unknown_pixels:
    if not encoding.unknown_to_void:
      values = np.unique(raw[unknown]) if values is None else np.array([v for v in values if int(v) not in table])
      raise MaskValueError(_unknown_message(values, encoding), encoding.by_colour)
    mapped[unknown] = voc.IGNORE_LABEL
  return DecodedMask(mapped.astype(np.uint8), unknown_pixels)


def _unknown_message(values: np.ndarray, encoding: MaskEncoding) -> str:
  shown = ", ".join(_raw_name(int(v), encoding.by_colour) for v in values[:10])
  more = f" (and {len(values) - 10} more)" if len(values) > 10 else ""
  if encoding.by_colour:
    return (
      f"{len(values)} colour(s) not in the colour table{' or label map' if encoding.label_map else ''}: {shown}{more}"
    )
  if encoding.label_map:
    return f"values {shown}{more} not in the label map"
  void = ", ".join(str(v) for v in encoding.void_values) or "none"
  return f"values {shown}{more} outside 0..{encoding.num_classes - 1} and the void value(s) ({void})"


def voc_colours_to_ids(rgb: np.ndarray) -> np.ndarray:
  """[H, W, 3] VOC colours -> [H, W] VOC palette indices; MaskValueError naming any colour outside VOC's map."""
  class_ids, unknown = voc.colours_to_ids(rgb)
  if class_ids is None:  # Exactly when there are unknown colours.
    shown = ", ".join(str(colour) for colour in unknown[:5])
    raise MaskValueError(
      f"{len(unknown)} RGB colour(s) not in the VOC colour map: {shown} (a colour mask of "
      f"another data set needs its colour table: --colour_table)",
      colours=True,
    )
  return class_ids


# ------------------------------------------------------------------------------------------------ the files


@dataclasses.dataclass(frozen=True)
class ColourTable:
  names: tuple[str, ...]  # the classes, in id order
  colours: tuple[Colour, ...]
  void_colours: tuple[Colour, ...]


_INT = re.compile(r"^\d{1,3}$")
_COMMENT = re.compile(r"\s*#(?![0-9a-fA-F]{6}\b)")  # a '#' that does not start a #rrggbb colour


def parse_colour(text: str) -> Colour | None:
  """`r,g,b`, `r g b`, `(r, g, b)` or `#rrggbb` -> (r, g, b); None when it is not a colour."""
  text = text.strip()
  if re.fullmatch(r"#[0-9a-fA-F]{6}", text):
    return unpack(int(text[1:], 16))
  parts = [p for p in re.split(r"[\s,;()\[\]]+", text) if p]
  if len(parts) == 3 and all(_INT.match(p) and int(p) < 256 for p in parts):
    return int(parts[0]), int(parts[1]), int(parts[2])
  return None


def parse_colour_table(text: str, source: str) -> ColourTable:
  """A colour table from a file's text: JSON ({name: colour} or [{"name", "color"|"colour"}]), or lines of a
  name and a colour in either order (`sky 128 128 128`, `128,128,128,sky`, CamVid's `64 128 64\tAnimal`, a CSV
  with a header line)."""
  rows: list[tuple[str, Colour]] = []
  stripped = text.strip()
  if stripped.startswith(("{", "[")):
    try:
      data = json.loads(stripped)
    except json.JSONDecodeError as e:
      raise EncodingError(f"{source}: not valid JSON ({e})") from None
    items = (
      data.items()
      if isinstance(data, dict)
      else [(row.get("name"), row.get("color", row.get("colour"))) for row in data if isinstance(row, dict)]
    )
    for name, colour in items:
      parsed = parse_colour(",".join(str(v) for v in colour) if isinstance(colour, list) else str(colour))
      if not name or parsed is None:
        raise EncodingError(f"{source}: {name!r}: {colour!r} is not a colour (r, g, b) of 0..255")
      rows.append((str(name), parsed))
  else:
    first = True
    for number, line in enumerate(text.splitlines(), 1):
      if not line.strip() or _COMMENT.match(line):
        continue
      tokens = [t for t in re.split(r"[\s,;]+", line.strip()) if t]
      row = _name_and_colour(tokens)
      if row:
        rows.append(row)
      elif not (first and not any(_INT.match(t) or t.startswith("#") for t in tokens)):  # else a CSV header
        raise EncodingError(
          f"{source}:{number}: {line.strip()!r} is not a name and a colour (r g b of 0..255, or #rrggbb)"
        )
      first = False
  if not rows:
    raise EncodingError(f"{source}: no classes (a name and a colour r g b per line)")
  names = [name for name, _ in rows if name.lower() not in VOID_NAMES]
  colours = [colour for name, colour in rows if name.lower() not in VOID_NAMES]
  void = list(dict.fromkeys(colour for name, colour in rows if name.lower() in VOID_NAMES))  # void rows may share
  repeated = sorted({str(c) for c in colours + void if (colours + void).count(c) > 1})
  if repeated:
    raise EncodingError(f"{source}: colour(s) {', '.join(repeated)} given to more than one row")
  if len(set(names)) != len(names):
    raise EncodingError(f"{source}: class names repeat: {', '.join(sorted({n for n in names if names.count(n) > 1}))}")
  return ColourTable(tuple(names), tuple(colours), tuple(void))


def _name_and_colour(tokens: list[str]) -> tuple[str, Colour] | None:
  """A row's name and colour: three integers or one #rrggbb, first or last, the name the rest."""
  for colour_at, name_at in (
    (slice(0, 3), slice(3, None)),
    (slice(-3, None), slice(0, -3)),
    (slice(0, 1), slice(1, None)),
    (slice(-1, None), slice(0, -1)),
  ):
    colour = parse_colour(" ".join(tokens[colour_at]))
    name = " ".join(tokens[name_at])
    if colour and name and parse_colour(name) is None and not all(_INT.match(t) for t in tokens[name_at]):
      return name, colour
  return None


def parse_label_map(
  text: str, source: str, *, by_colour: bool | None, class_names: tuple[str, ...] | None
) -> tuple[bool, tuple[tuple[int, int], ...]]:
  """(whether it maps colours, its (raw, class id or 255) pairs) from a JSON object or `RAW TARGET` lines
  (separated by spaces, ':', '=' or '->'); RAW an integer or a colour (by_colour None: whichever the first entry
  is; all alike); TARGET a class id, a class name or void."""
  stripped = text.strip()
  if stripped.startswith("{"):
    try:
      items = [(str(k), str(v)) for k, v in json.loads(stripped).items()]
    except (json.JSONDecodeError, AttributeError) as e:
      raise EncodingError(f"{source}: not a JSON object ({e})") from None
    entries = [(f"{source}: {raw!r}", raw, target) for raw, target in items]
  else:
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
      if not line.strip() or _COMMENT.match(line):
        continue
      match = re.fullmatch(r"\s*(.+?)\s*(?:->|=>|=|:|\s)\s*([^\s:=>]+)\s*", line)
      if not match:
        raise EncodingError(f"{source}:{number}: {line.strip()!r} is not `RAW TARGET`")
      entries.append((f"{source}:{number}", match.group(1), match.group(2)))
  if not entries:
    raise EncodingError(f"{source}: an empty label map")
  if by_colour is None:
    by_colour = _parse_raw(entries[0][1], False) is None and _parse_raw(entries[0][1], True) is not None
  mapping: dict[int, int] = {}
  for where, raw_text, target_text in entries:
    raw = _parse_raw(raw_text, by_colour)
    if raw is None:
      kind = "a colour (r,g,b or #rrggbb)" if by_colour else "an integer value"
      raise EncodingError(f"{where}: {raw_text!r} is not {kind}")
    if raw in mapping:
      raise EncodingError(f"{where}: {raw_text} is mapped twice")
    mapping[raw] = _parse_target(target_text, class_names, where)
  return by_colour, tuple(sorted(mapping.items()))


def _parse_raw(text: str, by_colour: bool) -> int | None:
  if by_colour:
    colour = parse_colour(text)
    return pack(colour) if colour else None
  return int(text) if re.fullmatch(r"\d+", text.strip()) else None


def _parse_target(text: str, class_names: tuple[str, ...] | None, where: str) -> int:
  if text.lower() in VOID_NAMES or text == str(voc.IGNORE_LABEL):
    return voc.IGNORE_LABEL
  if re.fullmatch(r"\d+", text):
    return int(text)
  if class_names and text in class_names:
    return class_names.index(text)
  known = f" (classes: {', '.join(class_names)})" if class_names else " (give --class_names to map to names)"
  raise EncodingError(f"{where}: target {text!r} is neither a class id, a class name nor void{known}")
