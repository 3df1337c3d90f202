"""One image file -> one square uint8 array, with PIL, the way every flaxray data set decodes its files:
upright (EXIF), 8-bit "L" or "RGB", resized bilinearly to a square. `decode_entry` turns any failure into a
one-line reason, so a bad file is skipped and named rather than ending a build."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from flaxray.data.folder import FileEntry

# Bump when the decoding / conversion / resizing below changes: it is part of the cache key.
DECODER_VERSION = "pil-bilinear-2"
# The formats of folder.IMAGE_EXTENSIONS: a file is sniffed among these only (a .jpeg may be a PNG),
# not handed to every decoder PIL has, some of which accept almost any bytes.
PIL_FORMATS = ("JPEG", "PNG", "BMP", "DIB", "GIF", "TIFF", "WEBP")  # JPEG covers MPO

_HIGH_DEPTH = ("I;16", "I;16L", "I;16B", "I;16N", "I;16S", "I")


def _to_8bit(img: Image.Image, mode: str) -> Image.Image:
    """Convert any PIL image to an 8-bit ``"L"`` or ``"RGB"`` image without clipping garbage.

    - 16-bit integer images (``I;16*``) are scaled by 255/65535 (bit-depth preserving, like
      decoding a 16-bit PNG to uint8 with TensorFlow); PIL's own ``convert("L")`` would clip.
    - ``I`` (32-bit int) and ``F`` (float): values already in 0..255 are kept, 0..65535 scaled as
      16-bit, ``F`` in 0..1 scaled by 255, anything else min-max scaled to 0..255; NaN or infinite
      pixels raise ``ValueError`` (the file is skipped, not turned into a black image).
    - Palette images go through RGBA (transparency kept) and alpha is dropped (``LA``, ``RGBA``,
      ...): the colour channels are kept as they are, as Keras does.
    - CMYK, YCbCr, HSV, 1-bit and the rest use PIL's conversions.
    """
    if img.mode == mode:
        return img
    if img.mode in _HIGH_DEPTH or img.mode == "F":
        a = np.asarray(img).astype(np.float64)
        if a.ndim == 3:
            a = a[..., 0]
        if not np.isfinite(a).all():  # no scaling can say what NaN or inf pixels were meant to be
            raise ValueError("float image with NaN or infinite pixels")
        if img.mode.startswith("I;16"):
            a = a * (255.0 / 65535.0)
        else:
            lo = float(a.min()) if a.size else 0.0
            hi = float(a.max()) if a.size else 0.0
            if img.mode == "F" and lo >= 0.0 and hi <= 1.0:
                a = a * 255.0
            elif lo >= 0.0 and hi <= 255.0:
                pass
            elif lo >= 0.0 and hi <= 65535.0:
                a = a * (255.0 / 65535.0)
            else:
                a = (a - lo) * (255.0 / max(hi - lo, 1e-12))
        img = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")
        return img if mode == "L" else img.convert(mode)
    if img.mode in ("P", "PA"):
        img = img.convert("RGBA")
    elif img.mode == "La":
        img = img.convert("LA")
    elif img.mode == "RGBa":
        img = img.convert("RGBA")
    elif img.mode == "LAB":
        img = img.convert("RGB") if mode == "RGB" else img.getchannel("L")
    return img.convert(mode)


def load_image(path: str | os.PathLike, image_size: int, channels: int) -> np.ndarray:
    """Decode one image file into a ``(image_size, image_size, channels)`` uint8 array.

    The image is fully decoded with PIL (so a truncated file raises), rotated upright with
    ``ImageOps.exif_transpose``, converted to 8-bit ``"L"`` (1 channel) or ``"RGB"`` (3 channels)
    by :func:`_to_8bit`, then resized to ``image_size`` x ``image_size`` with
    ``PIL.Image.Resampling.BILINEAR``, not keeping the aspect ratio (like Keras
    ``image_dataset_from_directory``). Note that PIL's BILINEAR widens its kernel when
    downscaling (it antialiases), unlike ``tf.image.resize``'s default.
    """
    with Image.open(path, formats=PIL_FORMATS) as img:
        img.load()
        try:
            img = ImageOps.exif_transpose(img)
        except Exception:  # an unparsable EXIF block: keep the pixels as stored
            pass
        img = _to_8bit(img, "L" if channels == 1 else "RGB")
        img = img.resize((image_size, image_size), Image.Resampling.BILINEAR)
        a = np.asarray(img, dtype=np.uint8)
    if channels == 1:
        a = a[..., None]
    return np.ascontiguousarray(a)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def decode_entry(root: Path, entry: FileEntry, image_size: int, channels: int):
    """``(array, None)`` or ``(None, reason)`` for one file of the folder."""
    path = root / entry.rel
    if entry.size == 0:
        return None, "empty file"
    try:
        return load_image(path, image_size, channels), None
    except UnidentifiedImageError:
        return None, "not a readable image (PIL cannot identify the file)"
    except Image.DecompressionBombError as e:
        return None, _one_line(f"image too large ({e})")
    except OSError as e:
        if "truncated" in str(e).lower():
            return None, _one_line(f"truncated image ({e})")
        return None, _one_line(f"cannot read or decode the image ({e})")
    except Exception as e:  # noqa: BLE001 - any decoder failure is a skipped file
        return None, _one_line(f"cannot decode the image ({type(e).__name__}: {e})")
