"""Opening an image file a user's data points at: one sentence for any file that cannot be read, and no
decoding of an image larger than PIL's decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``).

PIL warns above that limit and refuses above twice it; a warning would let a small file that declares
100 million pixels allocate them, so here both refuse, with the size and how to lift the limit. The file is
read into memory first and decoded from there: PIL reads a chunk's declared length in one call (a PNG whose
IDAT length field says 2 GiB made ``file.read(2**31)`` allocate 2 GiB), which from memory returns only the
bytes that exist.
"""

from __future__ import annotations

import io
import re
import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from lficam.errors import UserError


def open_rgb(path: str | Path) -> Image.Image:
    """The image at ``path`` decoded as RGB (the first frame of an animation)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(Path(path).read_bytes())) as file:
                return file.convert("RGB")
    except MemoryError:
        raise  # the limit below is what bounds memory: past it is a bug, not the user's file
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as error:
        pixels = re.search(r"\((\d+) pixels\)", str(error))
        raise UserError(
            f"Cannot read image {str(path)!r}: its {pixels.group(1) if pixels else 'many'} pixels exceed "
            f"PIL's limit of {Image.MAX_IMAGE_PIXELS} against decompression bombs; resize the image, or raise "
            "PIL.Image.MAX_IMAGE_PIXELS if you trust it."
        ) from None
    except Exception as error:  # PIL's decoders raise many types for damaged files
        # PIL names the in-memory buffer where it would name the file: say what it means instead
        reason = (
            "no image format PIL knows" if isinstance(error, UnidentifiedImageError) else str(error)[:120]
        )
        raise UserError(
            f"Cannot read image {str(path)!r} ({type(error).__name__}: {reason}); remove or replace the file."
        ) from None
