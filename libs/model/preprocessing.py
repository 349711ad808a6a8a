"""Image and box preprocessing shared by training, evaluation and the exported model.

One function per step so the SavedModel's in-graph preprocessing is exactly the
training one:

    decode -> resize (long side = target_side, aspect kept) -> pad centred to a square
           -> [optional horizontal / vertical flips] -> GT filtered, shuffled, padded

`image_window` is the [y1, x1, y2, x2] region of real image inside the padded square and
`image_scale` the per-axis factor [sy, sx] from original to resized pixels (per axis
because the short side is rounded to whole pixels), so that
    original = (network - [y1, x1, y1, x1]) / [sy, sx, sy, sx]
maps network boxes back exactly.
"""
from libs.base.tf_compat import tf


def decode_image(encoded, name=None):
    """JPEG/PNG/BMP/GIF bytes -> uint8 [H, W, 3] RGB (grey and RGBA become RGB)."""
    with tf.name_scope(name, "decode_image", [encoded]):
        image = tf.io.decode_image(encoded, channels=3, dtype=tf.uint8,
                                   expand_animations=False)
        image.set_shape([None, None, 3])
        return image


def normalize_pixels(images, pixel_means, pixel_std=(1.0, 1.0, 1.0)):
    """(RGB - PIXEL_MEANS) / PIXEL_STD as float32: the backbone's input.

    The one place images and references are normalised. A pretrained backbone needs
    the normalisation its weights were trained with (EfficientNet-Lite: mean 127, std
    128); the notebook's ResNet subtracts means only (std 1).
    """
    images = tf.cast(images, tf.float32) - tf.constant(pixel_means, tf.float32)
    if any(float(s) != 1.0 for s in pixel_std):
        images = images / tf.constant(pixel_std, tf.float32)
    return images


def resize_and_pad(image, target_side):
    """Resizes keeping aspect so the long side is `target_side`, pads centred to square.

    Returns (float32 image [S, S, 3], image_window float32 [4], image_scale float32 [2]).
    """
    with tf.name_scope("resize_and_pad"):
        shape = tf.shape(image)
        height = tf.cast(shape[0], tf.float32)
        width = tf.cast(shape[1], tf.float32)
        scale = float(target_side) / tf.maximum(height, width)
        new_h = tf.clip_by_value(tf.cast(tf.round(height * scale), tf.int32), 1, target_side)
        new_w = tf.clip_by_value(tf.cast(tf.round(width * scale), tf.int32), 1, target_side)
        resized = tf.image.resize_images(tf.cast(image, tf.float32), tf.stack([new_h, new_w]),
                                         method=tf.image.ResizeMethod.BILINEAR)
        top = (target_side - new_h) // 2
        left = (target_side - new_w) // 2
        padded = tf.pad(resized, [[top, target_side - new_h - top],
                                  [left, target_side - new_w - left], [0, 0]])
        padded.set_shape([target_side, target_side, 3])
        window = tf.cast(tf.stack([top, left, top + new_h, left + new_w]), tf.float32)
        image_scale = tf.stack([tf.cast(new_h, tf.float32) / height,
                                tf.cast(new_w, tf.float32) / width])
        return padded, window, image_scale


def _box_scale_and_offset(image_window, image_scale):
    # [..., 4] factors for [y1, x1, y2, x2]; any leading dimensions broadcast.
    scale = tf.concat([image_scale, image_scale], axis=-1)
    corner = image_window[..., :2]
    return scale, tf.concat([corner, corner], axis=-1)


def transform_boxes(boxes, image_window, image_scale):
    """Original-pixel boxes [N, 4] -> network-input pixels (after resize_and_pad).

    A batch works too: boxes [B, N, 4] with image_window [B, 1, 4], image_scale [B, 1, 2].
    """
    scale, offset = _box_scale_and_offset(image_window, image_scale)
    return boxes * scale + offset


def restore_boxes(boxes, image_window, image_scale):
    """Inverse of transform_boxes: network-input pixels -> original-image pixels."""
    scale, offset = _box_scale_and_offset(image_window, image_scale)
    return (boxes - offset) / scale


def mirror_boxes(boxes, side, direction):
    """Boxes [..., 4] ([y1, x1, y2, x2]) of an image of `side` pixels, mirrored
    "horizontal"ly (left-right) or "vertical"ly (top-bottom): pixel edges at t move to
    side - t, so a box stays on the same pixels of the mirrored image."""
    y1, x1, y2, x2 = tf.unstack(boxes, num=4, axis=-1)
    if direction == "horizontal":
        return tf.stack([y1, side - x2, y2, side - x1], axis=-1)
    if direction == "vertical":
        return tf.stack([side - y2, x1, side - y1, x2], axis=-1)
    raise ValueError(f"direction must be 'horizontal' or 'vertical', got {direction!r}")


def flip_horizontal(image, boxes, image_window):
    """Mirrors the padded square image, its boxes and its window left-right."""
    side = tf.cast(tf.shape(image)[1], tf.float32)
    return (tf.reverse(image, axis=[1]), mirror_boxes(boxes, side, "horizontal"),
            mirror_boxes(image_window, side, "horizontal"))


def flip_vertical(image, boxes, image_window):
    """Mirrors the padded square image, its boxes and its window top-bottom."""
    side = tf.cast(tf.shape(image)[0], tf.float32)
    return (tf.reverse(image, axis=[0]), mirror_boxes(boxes, side, "vertical"),
            mirror_boxes(image_window, side, "vertical"))


def filter_small_boxes(boxes, labels, min_size):
    """Drops GT boxes whose height or width is below `min_size` pixels."""
    heights = boxes[:, 2] - boxes[:, 0]
    widths = boxes[:, 3] - boxes[:, 1]
    keep = tf.logical_and(heights >= min_size, widths >= min_size)
    return tf.boolean_mask(boxes, keep), tf.boolean_mask(labels, keep)


def pad_or_truncate(tensor, length, pad_value=0):
    """First `length` rows of `tensor`, zero-padded (or `pad_value`) when shorter."""
    rows = tf.shape(tensor)[0]
    tensor = tensor[:length]
    pad = tf.maximum(length - rows, 0)
    paddings = [[0, pad]] + [[0, 0]] * (len(tensor.shape) - 1)
    padded = tf.pad(tensor, paddings, constant_values=pad_value)
    padded.set_shape([length] + tensor.shape.as_list()[1:])
    return padded


def stateless_permutation(n, seed):
    """A random permutation of range(n) from a [2] int seed (reproducible anywhere)."""
    keys = tf.random.stateless_uniform([n], seed=seed)
    return tf.argsort(keys)


# First bytes of the formats tf.io.decode_image reads.
_IMAGE_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM")


def _is_supported_image(encoded):
    """A scalar bool: does `encoded` start like a JPEG, PNG, GIF or BMP file?"""
    checks = [tf.image.is_jpeg(encoded)]
    for signature in _IMAGE_SIGNATURES:
        checks.append(tf.equal(tf.strings.substr(encoded, 0, len(signature)), signature))
    return tf.reduce_any(tf.stack(checks))


def serving_features(encoded_images, cfg):
    """A batch of encoded images (string [N], any sizes) -> the PREDICT features.

    The exported model's preprocessing: exactly the training one (decode ->
    resize_and_pad), one image at a time, then stacked. Bytes that are not a JPEG, PNG,
    GIF or BMP fail the call with "image i of the batch is not ...".
    """
    def one_image(args):
        encoded, index = args
        check = tf.debugging.Assert(
            _is_supported_image(encoded),
            ["image", index, "of the batch is not a JPEG, PNG, GIF or BMP file"])
        with tf.control_dependencies([check]):
            image = decode_image(encoded)
        original_size = tf.shape(image)[:2]
        padded, window, scale = resize_and_pad(image, cfg.TARGET_SIDE)
        return padded, window, scale, original_size

    with tf.name_scope("serving_preprocessing"):
        count = tf.shape(encoded_images)[0]
        images, windows, scales, sizes = tf.map_fn(
            one_image, (encoded_images, tf.range(count)),
            dtype=(tf.float32, tf.float32, tf.float32, tf.int32), back_prop=False)
        return {"image": images, "image_window": windows, "image_scale": scales,
                "original_size": sizes, "image_id": tf.range(tf.cast(count, tf.int64))}
