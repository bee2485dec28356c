"""Pascal VOC XML bounding boxes (Everingham et al. 2010) → object masks, parsed without trusting the file.

The file is parsed by expat with handlers that refuse any document type declaration, entity declaration
or external entity (what defusedxml forbids by default), so no entity is ever expanded and nothing outside
the file is fetched; a file over ``MAX_BYTES`` is refused unread.

Box rule: VOC coordinates are 1-based and inclusive, so ``<xmin>1</xmin><xmax>3</xmax>`` covers the first
three columns; fractional coordinates (some tools write them) are rounded to the nearest pixel (halves up), and boxes
are clipped to the image; a box that lies entirely outside the image is named in a warning (once per file and
process) and adds nothing. The mask of an image in class folder c is the union of the boxes whose ``<name>``
is c (compared without case or surrounding spaces), or the union of all its boxes when none is; a file
with no box gives an empty mask (no ground truth for that image).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from xml.parsers import expat

import torch
from torch import Tensor

from lficam.core.errors import UserError

log = logging.getLogger("lficam")

MAX_BYTES = 1 << 22  # 4 MiB: a VOC file with thousands of boxes is a few hundred kB
# box files remembered as warned about: past that many the warning may repeat, but memory stays bounded
_WARNED_MAX = 10_000
_warned: set[str] = set()  # per process: a data-loader worker warns once per file too


@dataclass
class _Element:
    tag: str
    text: list[str] = field(default_factory=list)
    children: list[_Element] = field(default_factory=list)

    def find(self, tag: str) -> _Element | None:
        return next((c for c in self.children if c.tag == tag), None)

    def value(self, tag: str) -> str | None:
        child = self.find(tag)
        return "".join(child.text).strip() if child is not None else None


@dataclass(frozen=True)
class Box:
    name: str
    xmin: float
    ymin: float
    xmax: float
    ymax: float


class _Refused(Exception):
    pass


def _bad(path: Path, reason: str) -> UserError:
    return UserError(
        f"Cannot use box file {str(path)!r}: {reason}; write it as Pascal VOC XML (<annotation><object><name>"
        "…</name><bndbox><xmin>…</xmin>…</bndbox></object></annotation>) without a DOCTYPE."
    )


def _parse(path: Path, data: bytes) -> _Element:
    parser = expat.ParserCreate()
    stack: list[_Element] = []
    root: list[_Element] = []

    def refuse(*_: object) -> None:
        raise _Refused("it declares a document type or entities, which this loader never expands")

    def start(tag: str, _attributes: dict[str, str]) -> None:
        element = _Element(tag)
        (stack[-1].children if stack else root).append(element)
        stack.append(element)

    def end(_tag: str) -> None:
        stack.pop()

    def text(data: str) -> None:
        if stack:
            stack[-1].text.append(data)

    parser.StartDoctypeDeclHandler = refuse
    parser.EntityDeclHandler = refuse
    parser.UnparsedEntityDeclHandler = refuse
    parser.ExternalEntityRefHandler = refuse
    parser.StartElementHandler, parser.EndElementHandler, parser.CharacterDataHandler = start, end, text
    try:
        parser.Parse(data, True)
    except _Refused as error:
        raise _bad(path, str(error)) from None
    except expat.ExpatError as error:
        raise _bad(
            path, f"it is not well-formed XML ({expat.ErrorString(error.code)} at line {error.lineno})"
        ) from None
    except LookupError as error:  # expat looks up the encoding the XML declaration names
        raise _bad(path, f"its XML declaration names an encoding Python does not know ({error})") from None
    except RecursionError:
        raise _bad(path, "it nests elements too deeply") from None
    return root[0]


def _number(path: Path, text: str | None, what: str) -> float:
    try:
        value = float(text) if text is not None else float("nan")
    except ValueError:
        value = float("nan")
    if value != value or value in (float("inf"), float("-inf")):
        raise _bad(path, f"{what} is {text!r}, not a number")
    return value


def read_voc(path: str | Path) -> tuple[tuple[int, int] | None, list[Box]]:
    """((width, height) when the file states it, else None; its boxes)."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_BYTES:
            raise _bad(path, f"it is larger than {MAX_BYTES} bytes")
        data = path.read_bytes()
    except OSError as error:
        raise _bad(path, f"it cannot be read ({error.strerror or error})") from None
    root = _parse(path, data)
    if root.tag != "annotation":
        raise _bad(path, f"its root element is <{root.tag}>, not <annotation>")
    size = None
    found = root.find("size")
    if found is not None and found.value("width") and found.value("height"):
        width = _number(path, found.value("width"), "<size><width>")
        height = _number(path, found.value("height"), "<size><height>")
        size = (int(width), int(height))
    boxes = []
    for number, element in enumerate(c for c in root.children if c.tag == "object"):
        box = element.find("bndbox")
        if box is None:
            raise _bad(path, f"object {number + 1} has no <bndbox>")
        coords = [
            _number(path, box.value(k), f"object {number + 1}'s <{k}>")
            for k in ("xmin", "ymin", "xmax", "ymax")
        ]
        if coords[2] < coords[0] or coords[3] < coords[1]:
            raise _bad(path, f"object {number + 1} has xmax < xmin or ymax < ymin ({coords})")
        boxes.append(Box(element.value("name") or "", *coords))
    return size, boxes


def chosen_boxes(boxes: list[Box], class_name: str) -> list[Box]:
    """The boxes whose name is the class (case and spaces ignored), or all of them when none is."""
    key = class_name.strip().casefold()
    matching = [b for b in boxes if b.name.strip().casefold() == key]
    return matching or list(boxes)


def _nearest(value: float) -> int:
    """Half up (10.5 → 11), not Python's half-to-even rounding."""
    return math.floor(value + 0.5)


def _clipped(box: Box, width: int, height: int) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) pixel bounds of a box, 0-based and exclusive, clipped to the image; empty
    (left ≥ right or top ≥ bottom) for a box that lies outside it."""
    left, right = max(_nearest(box.xmin) - 1, 0), min(_nearest(box.xmax), width)
    top, bottom = max(_nearest(box.ymin) - 1, 0), min(_nearest(box.ymax), height)
    return left, right, top, bottom


def outside_boxes(boxes: list[Box], width: int, height: int) -> list[int]:
    """The positions of the boxes that clipping to the image leaves empty: they lie entirely outside it."""
    empty = []
    for number, box in enumerate(boxes):
        left, right, top, bottom = _clipped(box, width, height)
        if not (left < right and top < bottom):
            empty.append(number)
    return empty


def boxes_to_mask(boxes: list[Box], width: int, height: int) -> Tensor:
    """H×W booleans: the union of the boxes, 1-based inclusive VOC coordinates rounded and clipped."""
    mask = torch.zeros(height, width, dtype=torch.bool)
    for box in boxes:
        left, right, top, bottom = _clipped(box, width, height)
        if left < right and top < bottom:
            mask[top:bottom, left:right] = True
    return mask


def _warn_outside(
    path: Path, boxes: list[Box], outside: list[int], size: tuple[int, int], image: str
) -> None:
    """Once per file and process: which boxes of ``path`` lie outside the image, and what that leaves."""
    if str(path) in _warned:
        return
    if len(_warned) < _WARNED_MAX:
        _warned.add(str(path))
    one = len(outside) == 1
    shown = ", ".join(
        f"{boxes[i].name or 'unnamed'} ({boxes[i].xmin:g}, {boxes[i].ymin:g})–({boxes[i].xmax:g}, {boxes[i].ymax:g})"
        for i in outside[:3]
    )
    log.warning(
        "Box file %r: %d of the %d box%s it gives %s %s entirely outside that %d×%d image (%s%s) and %s nothing "
        "to its mask%s; check the coordinates (VOC's are 1-based pixels of the image).",
        str(path),
        len(outside),
        len(boxes),
        "" if len(boxes) == 1 else "es",
        image,
        "lies" if one else "lie",
        size[0],
        size[1],
        shown,
        " …" if len(outside) > 3 else "",
        "adds" if one else "add",
        ": the image has no object, and the localisation metrics leave it out"
        if len(outside) == len(boxes)
        else "",
    )


def read_box_mask(path: str | Path, class_name: str, size: tuple[int, int], image_path: str | Path) -> Tensor:
    """The mask of the box file ``path`` for an image of ``size`` (width, height) in ``class_name``'s folder."""
    stated, boxes = read_voc(path)
    if stated is not None and stated != tuple(size) and stated != (0, 0):
        raise _bad(
            Path(path),
            f"it describes a {stated[0]}×{stated[1]} image but {str(image_path)!r} is {size[0]}×{size[1]}",
        )
    chosen = chosen_boxes(boxes, class_name)
    outside = outside_boxes(chosen, *size)
    if outside:
        _warn_outside(Path(path), chosen, outside, tuple(size), repr(str(image_path)))
    return boxes_to_mask(chosen, *size)
