"""YOLO labels (issue 29, item 4): class names by id, label-file names in any case,
polygons, subfolders, byte-order marks, EXIF orientation, the --class_names flag.

Every test writes its own small tree; conversions are a few tiny images."""
import json
import os
import struct
import subprocess
import sys
import zlib

import cv2
import numpy as np
import pytest

from data.io import annotation, convert, formats, label_map, reference_set
from libs.base import images as images_lib
from tests.conftest import REPO_ROOT
from tests.test_convert import counts_of, read_records


def write_png(path, rgb):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    assert cv2.imwrite(path, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def write_text(path, text, encoding="utf-8"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding=encoding) as handle:
        handle.write(text)


def convert_yolo(image_dir, labels_dir, output_dir, **kwargs):
    return convert.convert_dataset("yolo", str(image_dir), str(labels_dir),
                                   str(output_dir), progress_every_seconds=1e9, **kwargs)


def warnings_of(caplog):
    return [record.getMessage() for record in caplog.records
            if record.levelname == "WARNING"]


# ---------------------------------------------------------------------------------------
# 1. Class names by id
# ---------------------------------------------------------------------------------------

def test_names_mapping_with_gaps_keeps_its_ids(tmp_path, caplog):
    """names: {0: cat, 2: dog}: id 2 is dog, id 1 has no name (box_unknown_class), the
    gap is a warning line; ids may be digit strings."""
    image_dir, labels_dir = tmp_path / "images", tmp_path / "labels"
    write_png(str(image_dir / "x.png"), np.zeros((40, 50, 3), np.uint8))
    write_text(str(labels_dir / "x.txt"), "0 0.5 0.5 0.2 0.5\n"
                                          "1 0.5 0.5 0.4 0.4\n"
                                          "2 0.2 0.5 0.2 0.2\n")
    write_text(str(tmp_path / "data.yaml"), "names: {0: cat, 2: dog}\n")
    with caplog.at_level("WARNING"):
        summary = convert_yolo(image_dir, labels_dir, tmp_path / "out")
    assert counts_of(summary) == {"box_unknown_class": 1}
    (record,) = read_records(str(tmp_path / "out"), "train")
    assert label_map.read_label_map(str(tmp_path / "out")).class_names == ["cat", "dog"]
    assert [t.decode() for t in record["class_texts"]] == ["cat", "dog"]
    np.testing.assert_allclose(record["boxes"], [[10, 20, 30, 30], [16, 5, 24, 15]])
    lines = warnings_of(caplog)
    assert any("data.yaml: no name for class id 1" in line for line in lines), lines
    assert any("'<class id 1>'" in line and "has no name" in line for line in lines)

    write_text(str(tmp_path / "data.yaml"), 'names:\n  "0": cat\n  "3": dog\n')
    assert formats.yolo.read_class_names(str(labels_dir)) == {0: "cat", 3: "dog"}


def test_repeated_names_and_gaps_are_warned_about(tmp_path, caplog):
    labels_dir = tmp_path / "labels"
    labels_dir.mkdir()
    write_text(str(tmp_path / "data.yaml"), "names: {0: cat, 1: cat, 5: dog}\n")
    with caplog.at_level("WARNING"):
        assert formats.yolo.read_class_names(str(labels_dir)) == {0: "cat", 1: "cat", 5: "dog"}
    lines = warnings_of(caplog)
    assert len(lines) == 2, lines
    assert "no name for class ids 2-4" in lines[0]
    assert "class ids 0, 1 are all named 'cat'" in lines[1]
    write_text(str(tmp_path / "data.yaml"), "names: [a, b, a]\n")
    caplog.clear()
    with caplog.at_level("WARNING"):
        formats.yolo.read_class_names(str(labels_dir))
    assert ["class ids 0, 2 are all named 'a'" in line
            for line in warnings_of(caplog)] == [True]


@pytest.mark.parametrize("names, message", [
    ("{-1: cat}", "class id -1 of `names` is not a non-negative integer"),
    ("{a: cat}", "class id 'a' of `names` is not a non-negative integer"),
    ("{1.5: cat}", "class id 1.5 of `names` is not a non-negative integer"),
    ("{0: cat, 1: ''}", "class id 1 has no name"),
    ("{0: cat, 1: }", "class id 1 has no name"),
    ("[cat, '', dog]", "class id 1 has no name"),
    ("{0: cat, '0': dog}", "class id 0 is named twice"),
])
def test_unusable_names_are_one_line_errors(tmp_path, names, message):
    labels_dir = tmp_path / "labels"
    labels_dir.mkdir()
    path = tmp_path / "data.yaml"
    write_text(str(path), f"names: {names}\n")
    with pytest.raises(annotation.ConversionError) as raised:
        formats.yolo.read_class_names(str(labels_dir))
    text = str(raised.value)
    assert text.startswith(f"{path}: ") and message in text and "\n" not in text


def test_classes_txt_ids_are_line_numbers(tmp_path):
    labels_dir = tmp_path / "labels"
    labels_dir.mkdir()
    write_text(str(labels_dir / "classes.txt"), "a\nb\n\n\n")   # trailing blank lines
    assert formats.yolo.read_class_names(str(labels_dir)) == {0: "a", 1: "b"}
    write_text(str(labels_dir / "classes.txt"), "a\n\nc\n")     # would shift c to id 1
    with pytest.raises(annotation.ConversionError,
                       match=r"classes.txt: line 2 \(class id 1\) has no name"):
        formats.yolo.read_class_names(str(labels_dir))


# ---------------------------------------------------------------------------------------
# 2, 3, 5. Label files: .TXT, polygons, byte-order marks
# ---------------------------------------------------------------------------------------

def test_label_extension_in_any_case_and_byte_order_marks(tmp_path):
    image_dir, labels_dir = tmp_path / "images", tmp_path / "labels"
    for stem in ("upper", "mixed", "bom"):
        write_png(str(image_dir / f"{stem}.png"), np.zeros((40, 50, 3), np.uint8))
    write_text(str(labels_dir / "upper.TXT"), "0 0.5 0.5 0.2 0.5\n")
    write_text(str(labels_dir / "mixed.Txt"), "1 0.5 0.5 0.2 0.5\n")
    write_text(str(labels_dir / "bom.txt"), "1 0.5 0.5 0.2 0.5\n", encoding="utf-8-sig")
    write_text(str(labels_dir / "classes.txt"), "cat\ndog\n", encoding="utf-8-sig")
    summary = convert_yolo(image_dir, labels_dir, tmp_path / "out")
    assert summary["images_written"] == 3 and counts_of(summary) == {}
    records = {r["filename"]: r for r in read_records(str(tmp_path / "out"), "train")}
    assert [records[name]["class_texts"][0].decode()
            for name in ("bom.png", "mixed.png", "upper.png")] == ["dog", "dog", "cat"]

    (labels_dir / "classes.txt").unlink()
    write_text(str(tmp_path / "data.yaml"), "names: [cat, dog]\n", encoding="utf-8-sig")
    assert formats.yolo.read_class_names(str(labels_dir)) == {0: "cat", 1: "dog"}
    split = tmp_path / "split.txt"
    write_text(str(split), "upper\nbom.png\n", encoding="utf-8-sig")
    images, _ = convert.read_annotations("yolo", str(image_dir), str(labels_dir),
                                         str(split))
    assert [image.filename for image in images] == ["bom.png", "upper.png"]


def test_polygons_become_their_bounding_box(tmp_path, caplog):
    image_dir, labels_dir = tmp_path / "images", tmp_path / "labels"
    write_png(str(image_dir / "x.png"), np.zeros((40, 50, 3), np.uint8))
    write_text(str(labels_dir / "x.txt"),
               "0 0.2 0.25 0.6 0.5 0.4 0.75\n"                 # triangle: x 10..30, y 10..30
               "1 0.1 0.1 0.3 0.1 0.3 0.2 0.1 0.2\n"           # rectangle as 4 points
               "0 0.1 0.1 0.3 0.1 0.3 0.2 -0.2 0.5\n"          # reaches outside: clipped
               "0 0.1 0.1 0.3 nan 0.3 0.2\n"                   # not finite
               "0 0.1 0.1 0.3 0.1 0.3\n"                       # 6 values: malformed
               "0 0.1 0.1\n")                                  # 3 values: malformed
    write_text(str(tmp_path / "classes.txt"), "a\nb\n")
    with caplog.at_level("WARNING"):
        summary = convert_yolo(image_dir, labels_dir, tmp_path / "out")
    assert counts_of(summary) == {"annotation_invalid": 2, "polygon_to_box": 4,
                                  "box_not_finite": 1, "box_clipped": 1}
    assert not any("polygon_to_box" in line for line in warnings_of(caplog))  # quiet
    (record,) = read_records(str(tmp_path / "out"), "train")
    np.testing.assert_allclose(record["boxes"], [[10, 10, 30, 30], [4, 5, 8, 15],
                                                 [4, 0, 20, 15]], atol=1e-5)
    assert [t.decode() for t in record["class_texts"]] == ["a", "b", "a"]
    assert list(annotation.RULES).index("polygon_to_box") < \
        list(annotation.RULES).index("box_not_finite")


def test_pose_labels_keep_their_box_not_their_keypoints(tmp_path):
    """A pose dataset (data.yaml kpt_shape [2, 2]): "class cx cy w h" + 4 keypoint
    values is 9 fields, which would pass for a 4-point polygon: the box is read."""
    image_dir, labels_dir = tmp_path / "images", tmp_path / "labels"
    write_png(str(image_dir / "x.png"), np.zeros((40, 50, 3), np.uint8))
    write_text(str(labels_dir / "x.txt"),
               "0 0.5 0.5 0.4 0.5 0.1 0.1 0.9 0.9\n"   # box x 15..35, y 10..30
               "0 0.5 0.5 0.4 0.5\n")                  # no keypoints: malformed here
    write_text(str(tmp_path / "data.yaml"), "names: [person]\nkpt_shape: [2, 2]\n")
    summary = convert_yolo(image_dir, labels_dir, tmp_path / "out")
    assert counts_of(summary) == {"annotation_invalid": 1}
    (record,) = read_records(str(tmp_path / "out"), "train")
    np.testing.assert_allclose(record["boxes"], [[10, 15, 30, 35]], atol=1e-5)
    write_text(str(tmp_path / "data.yaml"), "names: [person]\nkpt_shape: 17\n")
    with pytest.raises(annotation.ConversionError, match="kpt_shape 17 is not"):
        convert_yolo(image_dir, labels_dir, tmp_path / "out")


# ---------------------------------------------------------------------------------------
# 4. Subfolders
# ---------------------------------------------------------------------------------------

def _subfolder_tree(tmp_path):
    """images/{top.png, a/x.png, b/x.png, b/c/y.png, .hidden/z.png} and their labels."""
    root = tmp_path / "DATA"
    image_dir, labels_dir = root / "images", root / "labels"
    rng = np.random.default_rng(0)
    for relative in ("top", "a/x", "b/x", "b/c/y", ".hidden/z"):
        write_png(str(image_dir / f"{relative}.png"),
                  rng.integers(0, 256, size=(40, 50, 3), dtype=np.uint8))
        write_text(str(labels_dir / f"{relative}.txt"), "0 0.5 0.5 0.4 0.5\n")
    write_text(str(labels_dir / "d" / "orphan.txt"), "0 0.5 0.5 0.4 0.5\n")
    write_text(str(root / "data.yaml"), "names: [thing]\n")
    return root, image_dir, labels_dir


def test_subfolders_pair_images_and_labels(tmp_path):
    root, image_dir, labels_dir = _subfolder_tree(tmp_path)
    summary = convert_yolo(image_dir, labels_dir, tmp_path / "out")
    assert counts_of(summary) == {"annotation_invalid": 1}     # d/orphan.txt
    records = read_records(str(tmp_path / "out"), "train")
    # ids: 1-based positions of the relative stems a/x, b/c/y, b/x, top (sorted).
    assert [(r["image_id"], r["filename"]) for r in records] == [
        (1, "a/x.png"), (2, "b/c/y.png"), (3, "b/x.png"), (4, "top.png")]
    for record in records:
        stored = cv2.imread(str(image_dir / record["filename"]))
        np.testing.assert_array_equal(record["pixels"], stored[:, :, ::-1])

    # Split files: relative stems or paths, Ultralytics' paths relative to the list;
    # a path to an image outside image_dir is not taken for one of the same name.
    write_png(str(root / "val" / "top.png"), np.zeros((40, 50, 3), np.uint8))
    split = root / "train.txt"
    write_text(str(split), "b/x\n./images/top.png\n" + str(image_dir / "a" / "x.png")
               + "\nnope\nb/x.png\nval/top.png\n")
    summary = convert_yolo(image_dir, labels_dir, tmp_path / "split_out",
                           split_file=str(split))
    assert counts_of(summary) == {"annotation_invalid": 2, "duplicate_image": 1}
    assert [(r["image_id"], r["filename"]) for r in
            read_records(str(tmp_path / "split_out"), "train")] == [
        (1, "a/x.png"), (3, "b/x.png"), (4, "top.png")]


def test_references_from_subfolders_do_not_overwrite_each_other(tmp_path):
    _, image_dir, labels_dir = _subfolder_tree(tmp_path)
    images, names = convert.read_annotations("yolo", str(image_dir), str(labels_dir))
    out = str(tmp_path / "refs")
    summary = reference_set.crop_references(images, out, per_class=10, margin=0.0,
                                            classes=names)
    assert sorted(summary["files"]) == ["thing/a_x_0.png", "thing/b_c_y_0.png",
                                        "thing/b_x_0.png", "thing/top_0.png"]
    crop = cv2.imread(os.path.join(out, "thing/b_x_0.png"))
    np.testing.assert_array_equal(crop, cv2.imread(str(image_dir / "b/x.png"))[10:30, 15:35])


# ---------------------------------------------------------------------------------------
# 6. EXIF orientation
# ---------------------------------------------------------------------------------------

def exif_tiff(orientation, byte_order="II", kind=3):
    """A TIFF structure with IFD0 holding one entry: Orientation."""
    order = "<" if byte_order == "II" else ">"
    value = struct.pack(order + "HH", orientation, 0) if kind == 3 else \
        struct.pack(order + "I", orientation)
    return (byte_order.encode() + struct.pack(order + "HI", 42, 8)
            + struct.pack(order + "H", 1)
            + struct.pack(order + "HHI", 0x0112, kind, 1) + value
            + struct.pack(order + "I", 0))


def with_app1(jpeg, payload):
    """JPEG bytes with an APP1 segment holding payload, after SOI and APP0 (JFIF)."""
    position = 2
    if jpeg[2:4] == b"\xff\xe0":
        position = 4 + int.from_bytes(jpeg[4:6], "big")
    segment = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    return jpeg[:position] + segment + jpeg[position:]


def jpeg_with_orientation(bgr, orientation, **kwargs):
    jpeg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
    return with_app1(jpeg, b"Exif\0\0" + exif_tiff(orientation, **kwargs))


def png_with_exif(bgr, tiff):
    png = cv2.imencode(".png", bgr)[1].tobytes()
    chunk = (struct.pack(">I", len(tiff)) + b"eXIf" + tiff
             + struct.pack(">I", zlib.crc32(b"eXIf" + tiff) & 0xFFFFFFFF))
    return png[:33] + chunk + png[33:]          # after the signature and IHDR


def upright_by_the_spec(stored, orientation):
    """The image as displayed, built pixel by pixel from the EXIF definition: where
    the stored 0th row and 0th column are in the displayed image."""
    row0, col0 = {1: ("top", "left"), 2: ("top", "right"), 3: ("bottom", "right"),
                  4: ("bottom", "left"), 5: ("left", "top"), 6: ("right", "top"),
                  7: ("right", "bottom"), 8: ("left", "bottom")}[orientation]
    h, w = stored.shape[:2]
    swapped = row0 in ("left", "right")
    shown = np.zeros((w, h) + stored.shape[2:] if swapped else stored.shape, stored.dtype)
    for r in range(h):
        for c in range(w):
            if swapped:     # a stored row is a displayed column, a stored column a row
                x = r if row0 == "left" else h - 1 - r
                y = c if col0 == "top" else w - 1 - c
            else:
                y = r if row0 == "top" else h - 1 - r
                x = c if col0 == "left" else w - 1 - c
            shown[y, x] = stored[r, c]
    return shown


def test_all_eight_orientations_match_the_exif_definition():
    stored = np.random.default_rng(2).integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    for orientation in range(1, 9):
        np.testing.assert_array_equal(images_lib.apply_exif_orientation(stored, orientation),
                                      upright_by_the_spec(stored, orientation),
                                      err_msg=str(orientation))
    np.testing.assert_array_equal(images_lib.apply_exif_orientation(stored, 0), stored)


def test_orientation_is_read_from_jpeg_and_png_and_agrees_with_opencv():
    bgr = np.random.default_rng(3).integers(0, 256, size=(16, 24, 3), dtype=np.uint8)
    for orientation in range(1, 9):
        for byte_order in ("II", "MM"):
            data = jpeg_with_orientation(bgr, orientation, byte_order=byte_order)
            assert images_lib.exif_orientation(data) == orientation
            rgb, conversion = images_lib.decode_image_bytes(data)   # the stored pixels
            assert conversion is None and rgb.shape == (16, 24, 3)
            # OpenCV's own EXIF handling (IMREAD_COLOR applies the orientation).
            shown = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            np.testing.assert_array_equal(
                images_lib.apply_exif_orientation(rgb, orientation), shown[:, :, ::-1],
                err_msg=f"{orientation} {byte_order}")
        png = png_with_exif(bgr, exif_tiff(orientation, "MM"))
        assert images_lib.exif_orientation(png) == orientation
        assert images_lib.decode_image_bytes(png)[1] is None
    assert images_lib.exif_orientation(jpeg_with_orientation(bgr, 6, kind=4)) == 6


def test_orientation_reader_never_raises_on_garbage():
    bgr = np.zeros((8, 8, 3), np.uint8)
    plain = cv2.imencode(".jpg", bgr)[1].tobytes()
    good = exif_tiff(6)
    cases = [b"", b"\xff\xd8\xff", plain, cv2.imencode(".png", bgr)[1].tobytes(),
             with_app1(plain, b"Exif\0\0"), with_app1(plain, b"Exif\0\0II*\0"),
             with_app1(plain, b"Exif\0\0XX*\0\x08\0\0\0"),           # no byte order
             with_app1(plain, b"Exif\0\0" + good[:4] + b"\xff\xff\xff\x7f"),   # offset
             with_app1(plain, b"Exif\0\0" + good[:8] + b"\xff\xff"),  # count, no entries
             with_app1(plain, b"Exif\0\0" + exif_tiff(9)),            # not 1-8
             with_app1(plain, b"Exif\0\0" + exif_tiff(6, kind=2)),    # wrong type
             with_app1(plain, b"http://ns.adobe.com/xap/1.0/\0" + good),  # XMP, not EXIF
             b"\xff\xd8\xff\xe1\xff\xff" + b"Exif\0\0" + good[:6]]    # length past end
    for data in cases:
        assert images_lib.exif_orientation(data) == 1, data[:40]
    full = jpeg_with_orientation(bgr, 6)
    rng = np.random.default_rng(4)
    for _ in range(300):                   # random damage in the header segments
        damaged = bytearray(full)
        for position in rng.integers(2, 80, size=3):
            damaged[position] = int(rng.integers(0, 256))
        assert images_lib.exif_orientation(bytes(damaged[:int(rng.integers(2, 120))])) \
            in range(1, 9)
        assert images_lib.exif_orientation(bytes(damaged)) in range(1, 9)


def _oriented_photo(tmp_path):
    """A JPEG stored sideways with EXIF orientation 6 -> (path, its stored RGB, the
    upright RGB). Upright (40 x 60): a white object at rows 5..15, columns 30..50."""
    upright = np.zeros((40, 60, 3), np.uint8)
    upright[:, :, 0] = np.arange(60, dtype=np.uint8)[None, :] * 2      # asymmetric
    upright[:, :, 1] = np.arange(40, dtype=np.uint8)[:, None] * 3
    upright[5:15, 30:50] = 255
    stored = np.rot90(upright, k=1)        # what viewers rotate 90 degrees clockwise
    data = jpeg_with_orientation(cv2.cvtColor(np.ascontiguousarray(stored),
                                              cv2.COLOR_RGB2BGR), 6)
    path = tmp_path / "images" / "photo.jpg"
    os.makedirs(os.path.dirname(path), exist_ok=True)
    path.write_bytes(data)
    decoded = images_lib.decode_image_bytes(data)[0]
    return path, decoded, np.rot90(decoded, k=-1)


def test_yolo_boxes_refer_to_the_upright_image(tmp_path, caplog):
    path, decoded, upright = _oriented_photo(tmp_path)
    assert decoded.shape == (60, 40, 3)
    labels_dir = tmp_path / "labels"
    write_text(str(labels_dir / "photo.txt"), f"0 {40 / 60!r} {10 / 40!r} {20 / 60!r} "
                                              f"{10 / 40!r}\n")
    write_text(str(tmp_path / "classes.txt"), "object\n")
    with caplog.at_level("WARNING"):
        summary = convert_yolo(path.parent, labels_dir, tmp_path / "out")
    assert counts_of(summary) == {"image_oriented": 1}
    assert any("EXIF orientation 6" in line and "[image_oriented]" in line
               for line in warnings_of(caplog))
    (record,) = read_records(str(tmp_path / "out"), "train")
    assert record["format"] == b"png" and (record["height"], record["width"]) == (40, 60)
    np.testing.assert_array_equal(record["pixels"], upright)
    np.testing.assert_allclose(record["boxes"], [[5, 30, 15, 50]], atol=1e-4)
    inside = record["pixels"][5:15, 30:50].astype(int)
    assert inside.min() > 200 and record["pixels"][20:, :30].mean() < 150

    # The references are cropped from the same upright pixels.
    images, names = convert.read_annotations("yolo", str(path.parent), str(labels_dir))
    assert images[0].apply_orientation
    out = str(tmp_path / "refs")
    reference_set.crop_references(images, out, per_class=1, margin=0.0, classes=names)
    crop = cv2.imread(os.path.join(out, "object", "photo_0.png"))[:, :, ::-1]
    np.testing.assert_array_equal(crop, upright[5:15, 30:50])


def test_voc_keeps_the_stored_pixels_and_says_so(tmp_path, caplog):
    path, decoded, _ = _oriented_photo(tmp_path)
    xml_dir = tmp_path / "xml"
    xml_dir.mkdir()
    write_text(str(xml_dir / "photo.xml"),
               "<annotation><filename>photo.jpg</filename><object><name>object</name>"
               "<bndbox><xmin>5</xmin><ymin>10</ymin><xmax>15</xmax><ymax>30</ymax>"
               "</bndbox></object></annotation>")
    with caplog.at_level("WARNING"):
        summary = convert.convert_dataset("voc", str(path.parent), str(xml_dir),
                                          str(tmp_path / "out"), progress_every_seconds=1e9)
    assert counts_of(summary) == {"image_orientation_ignored": 1}
    assert any("[image_orientation_ignored]" in line for line in warnings_of(caplog))
    (record,) = read_records(str(tmp_path / "out"), "train")
    assert record["format"] == b"jpeg" and record["image"] == path.read_bytes()
    np.testing.assert_array_equal(record["pixels"].shape, decoded.shape)
    assert "image_orientation_ignored" in convert.format_summary(summary)


# ---------------------------------------------------------------------------------------
# 7. --class_names names YOLO ids, --classes chooses classes
# ---------------------------------------------------------------------------------------

def test_classes_no_longer_name_yolo_ids(tmp_path, caplog):
    image_dir, labels_dir = tmp_path / "images", tmp_path / "labels"
    write_png(str(image_dir / "x.png"), np.zeros((40, 50, 3), np.uint8))
    write_text(str(labels_dir / "x.txt"), "0 0.5 0.5 0.2 0.5\n1 0.2 0.5 0.2 0.2\n")
    with pytest.raises(annotation.ConversionError, match="give --class_names"):
        convert_yolo(image_dir, labels_dir, tmp_path / "out", classes=["b", "a"])
    write_text(str(tmp_path / "data.yaml"), "names: [a, b]\n")
    # --classes: the label map's order only; data.yaml still names the ids.
    convert_yolo(image_dir, labels_dir, tmp_path / "out", classes=["b", "a"])
    (record,) = read_records(str(tmp_path / "out"), "train")
    assert [t.decode() for t in record["class_texts"]] == ["a", "b"]
    assert record["labels"].tolist() == [2, 1]
    with caplog.at_level("WARNING"):
        convert_yolo(image_dir, labels_dir, tmp_path / "out2", class_names=["x", "y"])
    assert [line for line in warnings_of(caplog) if "overrides" in line] == [
        f"--class_names overrides the class names of {tmp_path / 'data.yaml'}"]
    assert label_map.read_label_map(str(tmp_path / "out2")).class_names == ["x", "y"]


def test_make_references_takes_class_names_and_filters_with_classes(tmp_path):
    image_dir, labels_dir = tmp_path / "images", tmp_path / "labels"
    write_png(str(image_dir / "x.png"), np.full((40, 50, 3), 90, np.uint8))
    write_text(str(labels_dir / "x.txt"), "0 0.5 0.5 0.4 0.5\n1 0.3 0.5 0.4 0.5\n")
    write_text(str(tmp_path / "data.yaml"), "names: [a, b]\n")
    out = tmp_path / "refs"
    done = subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "tools", "make_references.py"),
         "--format", "yolo", "--image_dir", str(image_dir), "--annotations",
         str(labels_dir), "--output_dir", str(out), "--per_class", "1",
         "--class_names", "cat,dog", "--classes", "dog"],
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"--class_names overrides the class names of {tmp_path / 'data.yaml'}" \
        in done.stderr
    with open(out / "references.json") as handle:
        assert list(json.load(handle)["classes"]) == ["dog"]
    assert os.listdir(out / "dog") == ["x_1.png"]


def test_make_fewshot_split_names_yolo_ids_with_the_same_flag(tmp_path):
    """--class_names means the same in the few-shot tool as in the converter."""
    from data.io import fewshot
    image_dir, labels_dir = tmp_path / "images", tmp_path / "labels"
    rng = np.random.default_rng(3)
    for index in range(3):
        write_png(str(image_dir / f"x{index}.png"),
                  rng.integers(0, 256, size=(40, 50, 3), dtype=np.uint8))
        write_text(str(labels_dir / f"x{index}.txt"),
                   "0 0.3 0.3 0.4 0.4\n1 0.7 0.7 0.4 0.4\n")
    fewshot.make_kshot_split(
        "yolo", str(image_dir), str(labels_dir), str(tmp_path / "out"), shots=1, seed=0,
        yolo_names=["cell", "spore"], progress_every_seconds=1e9)
    assert label_map.read_label_map(str(tmp_path / "out" / "data")).class_names == \
        ["cell", "spore"]
    assert sorted(os.listdir(tmp_path / "out" / "references")) == \
        ["cell", "references.json", "spore"]


def test_the_issue_s_yolo_tree_converts_to_the_right_boxes_and_names(tmp_path):
    """Issue 29's tree in one: a gapped `names` mapping, a .TXT label with a byte-order
    mark, a polygon, subfolders and a rotated JPEG, converted through the command line."""
    root = tmp_path / "DATA"
    image_dir, labels_dir = root / "images" / "train", root / "labels" / "train"
    photo, _, upright = _oriented_photo(tmp_path)            # upright 40 x 60
    os.makedirs(image_dir / "phone")
    os.replace(photo, image_dir / "phone" / "photo.jpg")
    write_png(str(image_dir / "scan" / "board.png"), np.zeros((40, 50, 3), np.uint8))
    # the photo: a dog box in the upright frame (its white object), BOM, upper-case .TXT
    write_text(str(labels_dir / "phone" / "photo.TXT"),
               f"\ufeff2 {40 / 60!r} {10 / 40!r} {20 / 60!r} {10 / 40!r}\n",
               encoding="utf-8")
    # the board: a cat polygon (x 10..30, y 10..30) and an id without a name
    write_text(str(labels_dir / "scan" / "board.txt"),
               "0 0.2 0.25 0.6 0.5 0.4 0.75\n1 0.5 0.5 0.2 0.2\n")
    write_text(str(root / "data.yaml"), "names: {0: cat, 2: dog}\n")
    done = subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "tools", "convert_to_tfrecord.py"),
         "--format", "yolo", "--image_dir", str(image_dir), "--annotations",
         str(labels_dir), "--split", "train", "--output_dir", str(tmp_path / "out")],
        capture_output=True, text=True, cwd=str(tmp_path))
    assert done.returncode == 0, done.stderr
    records = {r["filename"]: r for r in read_records(str(tmp_path / "out"), "train")}
    assert sorted(records) == ["phone/photo.jpg", "scan/board.png"]
    assert label_map.read_label_map(str(tmp_path / "out")).class_names == ["cat", "dog"]
    photo_record, board = records["phone/photo.jpg"], records["scan/board.png"]
    np.testing.assert_array_equal(photo_record["pixels"], upright)
    np.testing.assert_allclose(photo_record["boxes"], [[5, 30, 15, 50]], atol=1e-4)
    assert [t.decode() for t in photo_record["class_texts"]] == ["dog"]
    np.testing.assert_allclose(board["boxes"], [[10, 10, 30, 30]], atol=1e-4)
    assert [t.decode() for t in board["class_texts"]] == ["cat"]
    for rule, count in (("polygon_to_box", 1), ("image_oriented", 1),
                        ("box_unknown_class", 1)):
        assert any(line.split()[:2] == [rule, str(count)]
                   for line in done.stderr.splitlines()), (rule, done.stderr)
