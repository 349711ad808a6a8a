"""Images for records: sniffing, decoding, EXIF orientation, what a record stores.

    load_image(path, apply_orientation=False) -> LoadedImage   (raises ImageError)
    decode_image_bytes(data) -> (uint8 RGB [H, W, 3], why not storable as is or None)
    exif_orientation(data) -> 1..8;  apply_exif_orientation(rgb, orientation)
    image_size(path, apply_orientation=False) -> (height, width) or None

What a record stores: an 8-bit RGB JPEG or PNG file byte for byte; anything else (grey,
RGBA, palette, 16-bit, CMYK, another format) is decoded, turned into 8-bit RGB
(to_rgb8) and re-encoded as PNG, which is lossless and which TensorFlow decodes like
the originals. Truncated files are refused here, not left to decoders that fill the
missing part with grey: a JPEG must reach its end-of-image marker, a PNG its IEND chunk.

EXIF orientation (JPEG APP1 "Exif", PNG eXIf) says how viewers show the stored pixels.
OpenCV is told to ignore it, so the pixels are the stored ones; load_image applies it
only when asked (apply_orientation: the boxes were drawn on the image as viewers show
it, as YOLO's are, see data/io/formats/yolo.py), and then stores the upright image as
PNG. Which formats ask, and how a non-default orientation is reported, is
data/io/cleaning.py's load_and_clean.

The loader is shared by the converter, the reference crops (data/io/reference_set.py)
and prediction (libs/serving/prediction.py), so all of them see the same pixels.
"""
import dataclasses
import struct

import cv2
import numpy as np

from libs.base.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp")


class ImageError(UserError):
    """An image that cannot be used; the message says why."""


@dataclasses.dataclass
class LoadedImage:
    encoded: bytes        # what the record stores: the original bytes or a PNG
    image_format: str     # "jpeg" | "png"
    height: int
    width: int
    converted_from: str   # None when the original bytes are stored unchanged
    rgb: np.ndarray       # uint8 [H, W, 3]
    orientation: int = 1  # the file's EXIF orientation (applied if load_image was asked)


_JPEG_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD,
                     0xCE, 0xCF}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_COLOR_TYPES = {0: "grayscale", 2: "RGB", 3: "palette", 4: "grayscale+alpha",
                    6: "RGBA"}


def _sniff_format(data):
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == _PNG_SIGNATURE:
        return "png"
    if data[:2] == b"BM":
        return "bmp"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def _jpeg_info(data):
    """-> (number of colour components or None, complete?) from the marker segments.

    OpenCV decodes a truncated JPEG without an error (grey fill), so completeness is
    checked here: after the first start-of-scan the entropy-coded data cannot contain
    FF D9 (byte stuffing), so an FF D9 there is the end-of-image marker.
    """
    pos, components = 2, None
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return components, False
        marker = data[pos + 1]
        if marker == 0xFF:            # fill byte
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:   # markers without a length
            pos += 2
            continue
        if marker == 0xD9:            # end of image before any scan: no pixels
            return components, False
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        if marker in _JPEG_SOF_MARKERS and pos + 9 < len(data):
            components = data[pos + 9]
        if marker == 0xDA:
            return components, data.find(b"\xff\xd9", pos + 2 + length) != -1
        pos += 2 + length
    return components, False


def _png_info(data):
    """-> (bit depth, colour type name, complete?) by walking the chunks up to IEND."""
    pos, depth, color = 8, None, None
    while pos + 8 <= len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        chunk_type = data[pos + 4:pos + 8]
        end = pos + 12 + length
        if end > len(data):
            return depth, color, False
        if chunk_type == b"IHDR" and length >= 10:
            depth = data[pos + 16]
            color = _PNG_COLOR_TYPES.get(data[pos + 17], f"colour type {data[pos + 17]}")
        if chunk_type == b"IEND":
            return depth, color, True
        pos = end
    return depth, color, False


# EXIF orientation -> how viewers show the stored pixels (apply_exif_orientation).
EXIF_ORIENTATIONS = {1: "as stored", 2: "mirrored horizontally", 3: "rotated 180 degrees",
                     4: "mirrored vertically", 5: "transposed",
                     6: "rotated 90 degrees clockwise", 7: "transversed",
                     8: "rotated 90 degrees counter-clockwise"}
_EXIF_ORIENTATION_TAG = 0x0112
_MAX_IFD_ENTRIES = 1024


def _tiff_orientation(tiff):
    """The Orientation tag of IFD0 of a TIFF structure (EXIF payload), 1 if absent or
    unusable. Every read is bounds-checked: garbage gives 1, never an exception."""
    if len(tiff) < 8 or tiff[:2] not in (b"II", b"MM"):
        return 1
    order = "<" if tiff[:2] == b"II" else ">"
    if struct.unpack(order + "H", tiff[2:4])[0] != 42:
        return 1
    offset = struct.unpack(order + "I", tiff[4:8])[0]
    if offset + 2 > len(tiff):
        return 1
    count = struct.unpack(order + "H", tiff[offset:offset + 2])[0]
    for entry in range(min(count, _MAX_IFD_ENTRIES)):
        start = offset + 2 + 12 * entry
        if start + 12 > len(tiff):
            return 1
        tag, kind = struct.unpack(order + "HH", tiff[start:start + 4])
        if tag != _EXIF_ORIENTATION_TAG:
            continue
        if kind == 3:      # SHORT: the value is in the first two bytes of the field
            value = struct.unpack(order + "H", tiff[start + 8:start + 10])[0]
        elif kind == 4:    # LONG, written by a few tools
            value = struct.unpack(order + "I", tiff[start + 8:start + 12])[0]
        else:
            return 1
        return value if value in EXIF_ORIENTATIONS else 1
    return 1


def exif_orientation(data):
    """EXIF orientation (1-8) of encoded JPEG (APP1 "Exif") or PNG (eXIf chunk) bytes;
    1 when there is none or it cannot be read. Walks the segments / chunks up to the
    image data only, never raises."""
    try:
        kind = _sniff_format(data)
        if kind == "jpeg":
            pos = 2
            while pos + 4 <= len(data) and data[pos] == 0xFF:
                marker = data[pos + 1]
                if marker == 0xFF:                                # fill byte
                    pos += 1
                    continue
                if marker == 0x01 or 0xD0 <= marker <= 0xD8:      # no length
                    pos += 2
                    continue
                if marker in (0xD9, 0xDA):                        # image data: no EXIF
                    return 1
                length = int.from_bytes(data[pos + 2:pos + 4], "big")
                if marker == 0xE1 and data[pos + 4:pos + 10] == b"Exif\0\0":
                    return _tiff_orientation(data[pos + 10:pos + 2 + length])
                pos += 2 + length
        elif kind == "png":
            pos = 8
            while pos + 8 <= len(data):
                length = int.from_bytes(data[pos:pos + 4], "big")
                chunk_type = data[pos + 4:pos + 8]
                if chunk_type == b"eXIf":
                    return _tiff_orientation(data[pos + 8:pos + 8 + length])
                if chunk_type == b"IEND":
                    return 1
                pos += 12 + length
    except (struct.error, IndexError, ValueError):
        pass
    return 1


def apply_exif_orientation(rgb, orientation):
    """Stored pixels [H, W, ...] -> the image as viewers show it for an EXIF orientation
    (1-8; anything else is 1). 5-8 swap height and width."""
    transforms = {
        1: lambda a: a,
        2: lambda a: a[:, ::-1],                      # mirror horizontal
        3: lambda a: a[::-1, ::-1],                   # rotate 180
        4: lambda a: a[::-1],                         # mirror vertical
        5: lambda a: a.swapaxes(0, 1),                # transpose
        6: lambda a: np.rot90(a, k=-1),               # rotate 90 clockwise
        7: lambda a: a[::-1, ::-1].swapaxes(0, 1),    # transverse
        8: lambda a: np.rot90(a, k=1),                # rotate 90 counter-clockwise
    }
    return np.ascontiguousarray(transforms.get(orientation, transforms[1])(rgb))


def to_rgb8(image):
    """An OpenCV-decoded image (BGR/BGRA/grey, 8 or 16 bit) -> uint8 RGB [H, W, 3].

    16-bit values are scaled by 1/257 (full 16-bit range onto 0..255, the same for every
    image, so relative intensities across the dataset are kept). Alpha is dropped, as
    TensorFlow's decode_image(channels=3) does.
    """
    if image.dtype == np.uint16:
        image = ((image.astype(np.uint32) + 128) // 257).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise ImageError(f"unsupported pixel type {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    raise ImageError(f"unsupported number of channels {image.shape[2]}")


def decode_image_bytes(data):
    """Encoded bytes -> (uint8 RGB [H, W, 3], why it is not storable as is, or None).

    Raises ImageError for zero-byte, truncated or undecodable data.
    """
    if not data:
        raise ImageError("zero-byte file")
    kind = _sniff_format(data)
    conversion = None
    if kind == "jpeg":
        components, complete = _jpeg_info(data)
        if not complete:
            raise ImageError("truncated JPEG (no end-of-image marker)")
        if components == 1:
            conversion = "grayscale JPEG"
        elif components == 4:
            conversion = "CMYK JPEG"
        elif components != 3:
            conversion = f"JPEG with {components} components"
    elif kind == "png":
        depth, color, complete = _png_info(data)
        if not complete:
            raise ImageError("truncated PNG (no IEND chunk)")
        if color != "RGB" or depth != 8:
            conversion = f"{depth}-bit {color} PNG"
    else:
        conversion = f"{kind or 'unrecognised'} format"
    image = cv2.imdecode(np.frombuffer(data, np.uint8),
                         cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION)
    if image is None or image.size == 0:
        raise ImageError(f"cannot be decoded as an image ({kind or 'unknown format'})")
    if image.dtype != np.uint8 and kind not in ("jpeg", "png"):  # PNG depth said above
        conversion = f"{conversion}, {image.dtype} pixels"
    return to_rgb8(image), conversion


def load_image(path, apply_orientation=False):
    """Reads an image file for a record: the bytes to store, their format, size, RGB.

    8-bit RGB JPEG/PNG files are stored byte for byte; anything else is converted to 8-bit
    RGB and re-encoded as PNG (lossless; TensorFlow decodes it like the originals).
    The pixels are the stored ones (EXIF orientation ignored, but returned); with
    apply_orientation, a non-default EXIF orientation is applied and the upright image
    re-encoded as PNG.
    """
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise ImageError(f"cannot be read ({exc.strerror or exc})") from None
    rgb, conversion = decode_image_bytes(data)
    orientation = exif_orientation(data)
    reoriented = apply_orientation and orientation != 1
    if reoriented:
        rgb = apply_exif_orientation(rgb, orientation)
    height, width = rgb.shape[:2]
    if conversion is None and not reoriented:
        return LoadedImage(data, _sniff_format(data), height, width, None, rgb, orientation)
    ok, png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ImageError("cannot be re-encoded as PNG")
    return LoadedImage(png.tobytes(), "png", height, width, conversion, rgb, orientation)


def image_size(path, apply_orientation=False):
    """(height, width) of an image as load_image decodes it (upright when
    apply_orientation), or None if unreadable."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
        rgb, _ = decode_image_bytes(data)
    except (OSError, ImageError):
        return None
    height, width = rgb.shape[:2]
    if apply_orientation and exif_orientation(data) >= 5:   # 5-8 swap the axes
        return width, height
    return height, width
