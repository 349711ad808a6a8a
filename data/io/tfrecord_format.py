"""The TFRecord schema of the project, in one place (one tf.train.Example per image).

Keys follow the TF Object Detection API where the meaning is the same; the one
difference is that box coordinates are stored in PIXELS of the stored image (the
OD API stores them normalised to [0, 1]), because every consumer here (preprocessing,
evaluation, reference cropping) works in pixels.

    image/encoded              bytes    the image file as stored: JPEG or PNG, 8-bit RGB
    image/format               bytes    b"jpeg" | b"png"
    image/height, image/width  int64    of the encoded image
    image/filename             bytes    file name relative to the source image dir
    image/id                   int64    unique within a dataset (COCO id; VOC: position)
    image/object/bbox/ymin     float[]  pixels, 0 <= ymin < ymax <= height
    image/object/bbox/xmin     float[]  pixels, 0 <= xmin < xmax <= width
    image/object/bbox/ymax     float[]
    image/object/bbox/xmax     float[]
    image/object/class/label   int64[]  1-based class ids (0 is background, never stored)
    image/object/class/text    bytes[]  class names, same order
    image/object/difficult     int64[]  1 = VOC "difficult" (COCO "iscrowd"); 0 otherwise
    image/object/ignore        int64[]  1 = an ignore region: trains neither as object nor
                                        as background (rpn_targets, sampling); always
                                        also difficult, so evaluation skips it too

`make_example` builds one record from Python values, `parse_example` is its inverse as a
graph function (for tf.data), and `decode_example` its inverse in plain Python/numpy
(for tools and tests that read a few records without a session).
"""
import os
import struct

import numpy as np

from libs.base.errors import UserError
from libs.base.tf_compat import tf

ENCODED = "image/encoded"
FORMAT = "image/format"
HEIGHT = "image/height"
WIDTH = "image/width"
FILENAME = "image/filename"
IMAGE_ID = "image/id"
YMIN = "image/object/bbox/ymin"
XMIN = "image/object/bbox/xmin"
YMAX = "image/object/bbox/ymax"
XMAX = "image/object/bbox/xmax"
LABEL = "image/object/class/label"
TEXT = "image/object/class/text"
DIFFICULT = "image/object/difficult"
IGNORE = "image/object/ignore"

IMAGE_FORMATS = ("jpeg", "png")


def _bytes(values):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))


def _floats(values):
    return tf.train.Feature(float_list=tf.train.FloatList(value=values))


def _ints(values):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=values))


def _to_bytes(text):
    return text if isinstance(text, bytes) else str(text).encode("utf-8")


def make_example(encoded, image_format, height, width, filename, image_id, boxes, labels,
                 class_texts, difficult=None, ignore=None):
    """One image as a tf.train.Example.

    boxes: [N, 4] pixels [y1, x1, y2, x2]; labels: [N] ints >= 1; class_texts: [N] str;
    difficult, ignore: [N] bools/ints or None (all 0). An ignored object is stored as
    difficult too (evaluation leaves both out).
    """
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image_format must be one of {IMAGE_FORMATS}, got {image_format!r}")
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    labels = [int(label) for label in labels]
    class_texts = list(class_texts)
    difficult = [0] * len(labels) if difficult is None else [int(bool(d)) for d in difficult]
    ignore = [0] * len(labels) if ignore is None else [int(bool(i)) for i in ignore]
    if not len(boxes) == len(labels) == len(class_texts) == len(difficult) == len(ignore):
        raise ValueError(f"{filename}: {len(boxes)} boxes, {len(labels)} labels, "
                         f"{len(class_texts)} class texts, {len(difficult)} difficult flags, "
                         f"{len(ignore)} ignore flags (must be equal)")
    difficult = [max(d, i) for d, i in zip(difficult, ignore)]
    if any(label < 1 for label in labels):
        raise ValueError(f"{filename}: class labels are 1-based (0 is background), "
                         f"got {labels}")
    feature = {
        ENCODED: _bytes([encoded]),
        FORMAT: _bytes([_to_bytes(image_format)]),
        HEIGHT: _ints([int(height)]),
        WIDTH: _ints([int(width)]),
        FILENAME: _bytes([_to_bytes(filename)]),
        IMAGE_ID: _ints([int(image_id)]),
        YMIN: _floats(boxes[:, 0].tolist()),
        XMIN: _floats(boxes[:, 1].tolist()),
        YMAX: _floats(boxes[:, 2].tolist()),
        XMAX: _floats(boxes[:, 3].tolist()),
        LABEL: _ints(labels),
        TEXT: _bytes([_to_bytes(text) for text in class_texts]),
        DIFFICULT: _ints(difficult),
        IGNORE: _ints(ignore),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature))


def _feature_spec():
    return {
        ENCODED: tf.io.FixedLenFeature([], tf.string),
        FORMAT: tf.io.FixedLenFeature([], tf.string, default_value=""),
        HEIGHT: tf.io.FixedLenFeature([], tf.int64),
        WIDTH: tf.io.FixedLenFeature([], tf.int64),
        FILENAME: tf.io.FixedLenFeature([], tf.string, default_value=""),
        IMAGE_ID: tf.io.FixedLenFeature([], tf.int64, default_value=0),
        YMIN: tf.io.VarLenFeature(tf.float32),
        XMIN: tf.io.VarLenFeature(tf.float32),
        YMAX: tf.io.VarLenFeature(tf.float32),
        XMAX: tf.io.VarLenFeature(tf.float32),
        LABEL: tf.io.VarLenFeature(tf.int64),
        TEXT: tf.io.VarLenFeature(tf.string),
        DIFFICULT: tf.io.VarLenFeature(tf.int64),
        IGNORE: tf.io.VarLenFeature(tf.int64),
    }


def parse_example(serialized):
    """Graph fn: a serialized Example -> dict of tensors.

        image        string  []      encoded JPEG/PNG bytes (decode with tf.io.decode_image)
        format       string  []
        height       int64   []
        width        int64   []
        filename     string  []
        image_id     int64   []
        boxes        float32 [N, 4]  pixels [y1, x1, y2, x2]
        labels       int64   [N]     1-based
        class_texts  string  [N]
        difficult    int64   [N]     0/1 (all 0 for records written without the key)
        ignore       int64   [N]     0/1 (the same)
    """
    with tf.name_scope("parse_example"):
        parsed = tf.io.parse_single_example(serialized, _feature_spec())
        dense = {key: tf.sparse.to_dense(parsed[key])
                 for key in (YMIN, XMIN, YMAX, XMAX, LABEL, DIFFICULT, IGNORE)}
        texts = tf.sparse.to_dense(parsed[TEXT], default_value="")
        boxes = tf.stack([dense[YMIN], dense[XMIN], dense[YMAX], dense[XMAX]], axis=1)
        labels = dense[LABEL]
        num_objects = tf.shape(labels)[0]

        def flag(key):
            # Records from other writers (or older ones) may lack a flag: every object
            # is then a normal one.
            values = dense[key]
            return tf.cond(tf.equal(tf.shape(values)[0], num_objects),
                           lambda: values, lambda: tf.zeros([num_objects], tf.int64))
        return {
            "image": parsed[ENCODED],
            "format": parsed[FORMAT],
            "height": parsed[HEIGHT],
            "width": parsed[WIDTH],
            "filename": parsed[FILENAME],
            "image_id": parsed[IMAGE_ID],
            "boxes": tf.reshape(boxes, [-1, 4]),
            "labels": labels,
            "class_texts": texts,
            "difficult": flag(DIFFICULT),
            "ignore": flag(IGNORE),
        }


def decode_example(serialized):
    """Plain-Python inverse of make_example: bytes -> dict like parse_example's, numpy."""
    example = tf.train.Example.FromString(serialized)
    feature = example.features.feature

    def floats(key):
        return np.asarray(feature[key].float_list.value, dtype=np.float32)

    def ints(key):
        return np.asarray(feature[key].int64_list.value, dtype=np.int64)

    def first_bytes(key):
        values = feature[key].bytes_list.value
        return values[0] if values else b""

    labels = ints(LABEL)
    image_id = ints(IMAGE_ID)

    def flag(key):
        values = ints(key)
        return values if len(values) == len(labels) else np.zeros(len(labels), np.int64)

    return {
        "image": first_bytes(ENCODED),
        "format": first_bytes(FORMAT),
        "height": int(ints(HEIGHT)[0]),
        "width": int(ints(WIDTH)[0]),
        "filename": first_bytes(FILENAME),
        "image_id": int(image_id[0]) if len(image_id) else 0,
        "boxes": np.stack([floats(YMIN), floats(XMIN), floats(YMAX), floats(XMAX)],
                          axis=1).reshape(-1, 4),
        "labels": labels,
        "class_texts": list(feature[TEXT].bytes_list.value),
        "difficult": flag(DIFFICULT),
        "ignore": flag(IGNORE),
    }


def shard_name(split, index, num_shards):
    """`<split>-00000-of-00004.tfrecord`: the one naming rule for shard files."""
    return f"{split}-{index:05d}-of-{num_shards:05d}.tfrecord"


def is_shard_of(name, split):
    """True for `<split>-NNNNN-of-NNNNN.tfrecord` exactly (not `<split>-backup.tfrecord`,
    nor the shards of a split whose name merely starts with `<split>-`)."""
    prefix = f"{split}-"
    if not (name.startswith(prefix) and name.endswith(".tfrecord")):
        return False
    parts = name[len(prefix):-len(".tfrecord")].split("-of-")
    return len(parts) == 2 and all(part.isdigit() for part in parts)


class TruncatedRecordError(UserError):
    """A TFRecord file that ends inside a record; the message is one line."""


def count_records(path):
    """Number of records in a TFRecord file, checking only its framing.

    Each record is [uint64 length][uint32 CRC of length][data][uint32 CRC of data]; the
    headers are read and the payloads skipped (a seek), so a multi-GB file is checked
    in milliseconds. A file cut short (a killed writer, a partial copy) raises
    TruncatedRecordError. The CRCs are left to TensorFlow's reader.
    """
    size = os.path.getsize(path)
    count, offset = 0, 0
    with open(path, "rb") as handle:
        while offset < size:
            header = handle.read(12)
            if len(header) < 12:
                break
            length = struct.unpack("<Q", header[:8])[0]
            end = offset + 12 + length + 4
            if end > size:
                break
            handle.seek(end)
            offset = end
            count += 1
    if offset != size:
        raise TruncatedRecordError(
            f"{path} is truncated: it ends inside record {count + 1} (byte {offset} of "
            f"{size}); convert the split again")
    return count
