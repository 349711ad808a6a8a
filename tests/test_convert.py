"""Annotation conversion: round trip, every validation rule, COCO == VOC, atomicity, CLI."""
import glob
import io
import json
import os
import struct
import subprocess
import sys
import zlib

import cv2
import numpy as np
import pytest
from conftest import REPO_ROOT, snapshot_tree

from data.io import annotation, convert, formats, label_map, tfrecord_format
from data.sample.generate import generate_voc_dataset
from libs.base import images as images_lib
from libs.base import io_utils
from libs.base.tf_compat import seeded_graph, tf

CONVERTER = os.path.join(REPO_ROOT, "tools", "convert_to_tfrecord.py")


# ---------------------------------------------------------------------------------------
# Helpers: hand-written VOC files and reading records back
# ---------------------------------------------------------------------------------------

def write_voc_xml(path, filename, size, objects):
    """objects: (name, (xmin, ymin, xmax, ymax) as strings or numbers, difficult)."""
    height, width = size
    parts = [f"<annotation><filename>{filename}</filename>"
             f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>"]
    for name, (x1, y1, x2, y2), difficult in objects:
        parts.append(f"<object><name>{name}</name><difficult>{int(difficult)}</difficult>"
                     f"<bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax>"
                     f"<ymax>{y2}</ymax></bndbox></object>")
    parts.append("</annotation>")
    with open(path, "w") as handle:
        handle.write("".join(parts))


def palette_png(indices, palette):
    """A minimal 8-bit palette PNG (OpenCV cannot write one)."""
    height, width = indices.shape

    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    rows = b"".join(b"\x00" + row.astype(np.uint8).tobytes() for row in indices)
    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 3, 0, 0, 0))
            + chunk(b"PLTE", bytes(np.asarray(palette, np.uint8).ravel()))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def read_records(output_dir, split):
    """All records of a split through tf.data + parse_example in a session."""
    files = sorted(glob.glob(os.path.join(output_dir, f"{split}-*.tfrecord")))
    records = []
    with seeded_graph().as_default():
        dataset = tf.data.TFRecordDataset(files).map(tfrecord_format.parse_example)
        parsed = tf.data.make_one_shot_iterator(dataset).get_next()
        decoded = tf.io.decode_image(parsed["image"], channels=3, expand_animations=False)
        with tf.Session() as session:
            while True:
                try:
                    record, pixels = session.run([parsed, decoded])
                except tf.errors.OutOfRangeError:
                    break
                record["pixels"] = pixels
                record["filename"] = record["filename"].decode()
                records.append(record)
    return records


def same_files(first, second):
    """The two folders hold the same file names with the same bytes."""
    assert sorted(os.listdir(first)) == sorted(os.listdir(second))
    for name in os.listdir(first):
        with open(os.path.join(first, name), "rb") as a, \
                open(os.path.join(second, name), "rb") as b:
            assert a.read() == b.read(), name


def counts_of(summary):
    return {rule: summary[rule] for rule in annotation.RULES if summary[rule]}


# ---------------------------------------------------------------------------------------
# Round trip on the sample data
# ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("sample"))
    result = generate_voc_dataset(root, num_train=8, num_val=4, seed=3)
    return root, result


def _convert_sample(root, output_dir, split="train", **kwargs):
    return convert.convert_dataset(
        "voc", os.path.join(root, "JPEGImages"), os.path.join(root, "Annotations"),
        output_dir, split_file=os.path.join(root, "ImageSets/Main", split + ".txt"),
        progress_every_seconds=1e9, **kwargs)


def test_round_trip_matches_annotations(sample, tmp_path):
    root, result = sample
    output_dir = str(tmp_path / "data")
    summary = _convert_sample(root, output_dir, num_shards=2)
    assert summary["images_written"] == 8 and counts_of(summary) == {}
    assert summary["files"] == ["train-00000-of-00002.tfrecord",
                                "train-00001-of-00002.tfrecord"]
    labels = label_map.read_label_map(output_dir)
    assert labels.class_names == ["cell", "crystal"]
    assert labels.splits["train"]["num_images"] == 8

    records = read_records(output_dir, "train")
    assert sorted(r["filename"] for r in records) == [i + ".jpg" for i in result["train"]]
    for record in records:
        image_id = record["filename"][:-4]
        height, width = result["sizes"][image_id]
        assert (record["height"], record["width"]) == (height, width)
        assert record["pixels"].shape == (height, width, 3)
        assert record["format"] == b"jpeg"
        # VOC ids: 1-based position of the XML in the sorted annotation folder.
        assert record["image_id"] == int(image_id.split("_")[1]) + 1
        expected = result["objects"][image_id]
        np.testing.assert_array_equal(
            record["boxes"], np.array([[y1, x1, y2, x2] for _, (x1, y1, x2, y2) in expected],
                                      np.float32))
        assert record["boxes"].dtype == np.float32 and record["labels"].dtype == np.int64
        assert record["labels"].tolist() == [labels.id_of(n) for n, _ in expected]
        assert [t.decode() for t in record["class_texts"]] == [n for n, _ in expected]
        assert record["difficult"].tolist() == [0] * len(expected)
        with open(os.path.join(root, "JPEGImages", record["filename"]), "rb") as handle:
            assert record["image"] == handle.read()  # 8-bit RGB JPEG stored byte for byte

    # The pure-Python decoder agrees with the graph parser.
    raw = next(tf.io.tf_record_iterator(os.path.join(output_dir, summary["files"][0])))
    plain = tfrecord_format.decode_example(raw)
    first = [r for r in records if r["image_id"] == plain["image_id"]][0]
    np.testing.assert_array_equal(plain["boxes"], first["boxes"])
    np.testing.assert_array_equal(plain["labels"], first["labels"])


def test_output_is_deterministic(sample, tmp_path):
    root, _ = sample
    first, second = str(tmp_path / "a"), str(tmp_path / "b")
    _convert_sample(root, first, num_shards=3)
    _convert_sample(root, second, num_shards=3)
    same_files(first, second)


def test_coco_conversion_equals_voc(sample, tmp_path):
    root, _ = sample
    voc_dir, coco_dir = str(tmp_path / "voc"), str(tmp_path / "coco")
    _convert_sample(root, voc_dir)
    images, _ = convert.read_annotations("voc", os.path.join(root, "JPEGImages"),
                                         os.path.join(root, "Annotations"))
    # Category ids deliberately unlike the label map's, to show names decide the ids.
    categories = [{"id": 7, "name": "crystal"}, {"id": 3, "name": "cell"}]
    coco = {"images": [], "annotations": [], "categories": categories}
    for image in images:
        height, width = cv2.imread(image.image_path).shape[:2]
        coco["images"].append({"id": image.image_id, "file_name": image.filename,
                               "height": height, "width": width})
        for obj in image.objects:
            y1, x1, y2, x2 = obj.box
            coco["annotations"].append({
                "id": len(coco["annotations"]) + 1, "image_id": image.image_id,
                "category_id": 3 if obj.name == "cell" else 7,
                "bbox": [x1, y1, x2 - x1, y2 - y1], "iscrowd": 0, "area": 1.0})
    json_path = str(tmp_path / "instances.json")
    with open(json_path, "w") as handle:
        json.dump(coco, handle)
    convert.convert_dataset("coco", os.path.join(root, "JPEGImages"), json_path, coco_dir,
                            split_file=os.path.join(root, "ImageSets/Main/train.txt"),
                            progress_every_seconds=1e9)
    same_files(voc_dir, coco_dir)


# ---------------------------------------------------------------------------------------
# A new annotation format: one reader, registered by name
# ---------------------------------------------------------------------------------------

def _read_csv_boxes(image_dir, csv_path, split_file, report, class_names=None):
    """A format made up for the test: "filename,class,x1,y1,x2,y2" lines, one box each;
    image ids are positions in the sorted image folder (as VOC's for the sample)."""
    ids = {name: position + 1 for position, name in enumerate(sorted(
        name for names in annotation.image_index(image_dir).values() for name in names))}
    wanted = set(annotation.read_split_file(split_file)) if split_file else None
    by_name = {}
    with open(csv_path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            fields = line.strip().split(",")
            if len(fields) != 6:
                report.add("annotation_invalid", f"{csv_path} line {number}",
                           f"{line.strip()!r}: not filename,class,x1,y1,x2,y2")
                continue
            filename, name = fields[:2]
            if wanted is not None and annotation.file_stem(filename) not in wanted:
                continue
            if filename not in by_name:
                path = os.path.join(image_dir, filename)
                by_name[filename] = annotation.ImageAnnotation(
                    image_id=ids.get(filename, 0), filename=filename,
                    image_path=path if os.path.isfile(path) else None, source=csv_path)
            image = by_name[filename]
            x1, y1, x2, y2 = (annotation.float_or_nan(value) for value in fields[2:])
            image.objects.append(annotation.ObjectAnnotation(
                name, (y1, x1, y2, x2), index=len(image.objects)))
    images = sorted(by_name.values(), key=lambda image: image.image_id)
    return images, sorted({obj.name for image in images for obj in image.objects})


def _check_csv_inputs(image_dir, csv_path):
    formats.registry.require_file(csv_path, "CSV boxes are one file")


@pytest.fixture
def csv_format(monkeypatch):
    """The made-up format, registered for one test only (the registry is restored)."""
    monkeypatch.setattr(formats.registry, "_REGISTERED", dict(formats.registry._REGISTERED))
    return formats.register(formats.Format(
        name="csv", label="CSV", annotations_help="one CSV file, a box per line",
        annotations_short="the CSV file", split_entries="file stems",
        check_inputs=_check_csv_inputs, read=_read_csv_boxes))


def test_a_new_format_is_one_registered_reader(sample, csv_format, tmp_path):
    """The shared rules and writer apply to a format that only reads."""
    root, _ = sample
    image_dir = os.path.join(root, "JPEGImages")
    voc_dir, csv_dir = str(tmp_path / "voc"), str(tmp_path / "csv")
    voc_summary = _convert_sample(root, voc_dir)
    images, _ = convert.read_annotations("voc", image_dir, os.path.join(root, "Annotations"))
    lines = ["sample_0000.jpg,cell,1,2"]                  # annotation_invalid (the reader)
    for image in images:
        for obj in image.objects:
            y1, x1, y2, x2 = obj.box
            lines.append(f"{image.filename},{obj.name},{x1!r},{y1!r},{x2!r},{y2!r}")
        lines.append(f"{image.filename},cell,9,5,9,30")   # box_degenerate (the rules)
    csv_path = tmp_path / "boxes.csv"
    csv_path.write_text("\n".join(lines) + "\n")

    assert formats.names() == ("voc", "coco", "yolo", "csv")
    summary = convert.convert_dataset(
        "csv", image_dir, str(csv_path), csv_dir, progress_every_seconds=1e9,
        split_file=os.path.join(root, "ImageSets/Main/train.txt"))
    same_files(voc_dir, csv_dir)
    assert counts_of(summary) == {**counts_of(voc_summary), "annotation_invalid": 1,
                                  "box_degenerate": voc_summary["images_read"]}
    with pytest.raises(annotation.ConversionError, match=r"no such file \(CSV boxes are"):
        convert.check_inputs("csv", image_dir, os.path.join(root, "Annotations"))
    with pytest.raises(annotation.ConversionError, match="one of voc, coco, yolo, csv, got"):
        formats.get("tsv")
    with pytest.raises(ValueError, match="'csv' is already registered"):
        formats.register(csv_format)


# ---------------------------------------------------------------------------------------
# Every validation rule on files written here
# ---------------------------------------------------------------------------------------

@pytest.fixture()
def bad_dataset(tmp_path):
    """A VOC folder with one case per rule; returns (image_dir, xml_dir, image arrays)."""
    image_dir, xml_dir = tmp_path / "images", tmp_path / "xml"
    image_dir.mkdir()
    xml_dir.mkdir()
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(60, 80, 3), dtype=np.uint8)
    ok_box = ("RBC", (10, 5, 30, 25), 0)
    arrays = {}

    def add(stem, filename, data, objects, size=(60, 80)):
        if data is not None:
            (image_dir / filename).write_bytes(data)
        write_voc_xml(str(xml_dir / (stem + ".xml")), filename, size, objects)

    jpeg = cv2.imencode(".jpg", rgb)[1].tobytes()
    add("a_good", "a_good.jpg", jpeg, [
        ok_box,
        ("WBC", (40, 10, 95, 70), 1),          # partly outside: clipped; difficult
        ("RBC", (30, 10, 30, 20), 0),          # degenerate: x2 == x1
        ("RBC", (30, 20, 40, 15), 0),          # degenerate: y2 < y1
        ("RBC", ("nan", 1, 10, 10), 0),        # NaN
        ("RBC", (1, 1, "inf", 10), 0),         # inf
        ("RBC", (100, 70, 120, 90), 0),        # entirely outside
        ("Platelets", (1, 1, 10, 10), 0),      # unknown class (not in --classes)
    ])
    add("b_truncated", "b_truncated.jpg", jpeg[:len(jpeg) // 2], [ok_box])
    add("c_zero", "c_zero.jpg", b"", [ok_box])
    gray = rgb[:, :, 0].copy()
    arrays["d_gray.png"] = np.repeat(gray[:, :, None], 3, axis=2)
    add("d_gray", "d_gray.png", cv2.imencode(".png", gray)[1].tobytes(), [ok_box])
    rgba = np.dstack([rgb, np.full((60, 80), 128, np.uint8)])
    arrays["e_rgba.png"] = rgb
    add("e_rgba", "e_rgba.png",
        cv2.imencode(".png", cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))[1].tobytes(), [ok_box])
    deep = rgb.astype(np.uint16) * 257
    arrays["f_16bit.png"] = rgb
    add("f_16bit", "f_16bit.png",
        cv2.imencode(".png", cv2.cvtColor(deep, cv2.COLOR_RGB2BGR))[1].tobytes(), [ok_box])
    palette = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)
    indices = rng.integers(0, 3, size=(60, 80))
    arrays["g_palette.png"] = palette[indices]
    add("g_palette", "g_palette.png", palette_png(indices, palette), [ok_box])
    add("h_empty", "h_empty.jpg", jpeg, [])
    add("i_all_bad", "i_all_bad.jpg", jpeg, [("RBC", (5, 5, 5, 5), 0),
                                             ("Platelets", (1, 1, 9, 9), 0)])
    add("j_size", "j_size.jpg", jpeg, [ok_box], size=(120, 160))
    add("k_missing", "k_missing.jpg", None, [ok_box])
    (xml_dir / "l_broken.xml").write_text("<annotation><object>")
    png_rgb = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes()
    add("m_rgb_png", "m_rgb_png.png", png_rgb, [ok_box])
    add("n_trunc_png", "n_trunc_png.png", png_rgb[:len(png_rgb) // 2], [ok_box])
    return str(image_dir), str(xml_dir), arrays


def test_every_rule_is_counted_and_applied(bad_dataset, tmp_path):
    image_dir, xml_dir, arrays = bad_dataset
    output_dir = str(tmp_path / "out")
    summary = convert.convert_dataset("voc", image_dir, xml_dir, output_dir,
                                      classes=["RBC", "WBC"], progress_every_seconds=1e9)
    assert counts_of(summary) == {
        "annotation_invalid": 1,   # l_broken
        "image_missing": 1,        # k_missing
        "image_unreadable": 3,     # b_truncated, c_zero, n_trunc_png
        "image_converted": 4,      # d_gray, e_rgba, f_16bit, g_palette
        "size_mismatch": 1,        # j_size
        "box_not_finite": 2,
        "box_degenerate": 3,       # two in a_good, one in i_all_bad
        "box_unknown_class": 2,    # a_good, i_all_bad
        "box_outside": 1,
        "box_clipped": 1,
        "object_difficult": 1,
        "image_no_objects": 2,     # h_empty, i_all_bad
    }
    records = {r["filename"]: r for r in read_records(output_dir, "train")}
    assert sorted(records) == ["a_good.jpg", "d_gray.png", "e_rgba.png", "f_16bit.png",
                               "g_palette.png", "j_size.jpg", "m_rgb_png.png"]
    assert summary["images_written"] == 7 and summary["images_read"] == 13

    good = records["a_good.jpg"]
    np.testing.assert_array_equal(good["boxes"], [[5, 10, 25, 30], [10, 40, 60, 80]])
    assert good["labels"].tolist() == [1, 2] and good["difficult"].tolist() == [0, 1]
    assert label_map.read_label_map(output_dir).class_names == ["RBC", "WBC"]

    for name, expected in arrays.items():
        assert records[name]["format"] == b"png", name
        np.testing.assert_array_equal(records[name]["pixels"], expected, err_msg=name)
    assert records["m_rgb_png.png"]["format"] == b"png"   # stored as is, not "converted"
    sized = records["j_size.jpg"]
    assert (sized["height"], sized["width"]) == (60, 80)  # the real image wins


def test_cmyk_jpeg_is_converted(tmp_path):
    image_module = pytest.importorskip("PIL.Image")
    rgb = np.random.default_rng(1).integers(0, 256, size=(20, 30, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    image_module.fromarray(rgb).convert("CMYK").save(buffer, "JPEG", quality=95)
    path = tmp_path / "cmyk.jpg"
    path.write_bytes(buffer.getvalue())
    loaded = images_lib.load_image(str(path))
    assert loaded.converted_from == "CMYK JPEG" and loaded.image_format == "png"
    assert loaded.rgb.shape == (20, 30, 3)
    assert np.abs(loaded.rgb.astype(int) - rgb).mean() < 20


def test_label_map_is_shared_across_splits(bad_dataset, tmp_path):
    image_dir, xml_dir, _ = bad_dataset
    output_dir = str(tmp_path / "out")
    train_list, val_list = tmp_path / "train.txt", tmp_path / "val.txt"
    train_list.write_text("m_rgb_png\n")
    val_list.write_text("a_good\n")
    # train sees only RBC: the label map gets RBC = 1.
    convert.convert_dataset("voc", image_dir, xml_dir, output_dir,
                            split_file=str(train_list), progress_every_seconds=1e9)
    assert label_map.read_label_map(output_dir).class_names == ["RBC"]
    # val: WBC and Platelets are unknown to the existing map -> dropped and counted.
    summary = convert.convert_dataset("voc", image_dir, xml_dir, output_dir,
                                      split_file=str(val_list), progress_every_seconds=1e9)
    assert summary["split"] == "val" and summary["box_unknown_class"] == 2
    assert read_records(output_dir, "val")[0]["labels"].tolist() == [1]
    # Listing a class appends it with the next id; existing ids never move.
    summary = convert.convert_dataset("voc", image_dir, xml_dir, output_dir,
                                      split_file=str(val_list), classes=["WBC", "RBC"],
                                      progress_every_seconds=1e9)
    labels = label_map.read_label_map(output_dir)
    assert labels.class_names == ["RBC", "WBC"]
    assert sorted(labels.splits) == ["train", "val"]
    assert read_records(output_dir, "val")[0]["labels"].tolist() == [1, 2]
    assert summary["box_unknown_class"] == 1   # Platelets


def test_fewer_shards_removes_stale_ones(sample, tmp_path):
    root, _ = sample
    output_dir = str(tmp_path / "data")
    _convert_sample(root, output_dir, num_shards=3)
    _convert_sample(root, output_dir, split="val")
    summary = _convert_sample(root, output_dir, num_shards=2)
    assert sorted(os.listdir(output_dir)) == sorted(
        summary["files"] + ["label_map.json", "val-00000-of-00001.tfrecord"])
    assert len(read_records(output_dir, "train")) == 8


# ---------------------------------------------------------------------------------------
# Atomicity
# ---------------------------------------------------------------------------------------

def test_failure_midway_leaves_output_untouched(sample, tmp_path, monkeypatch):
    root, _ = sample
    fresh, previous = str(tmp_path / "fresh"), str(tmp_path / "previous")
    _convert_sample(root, previous, num_shards=1)
    before = snapshot_tree(previous)

    real_make_example = tfrecord_format.make_example
    calls = []

    def failing_make_example(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise RuntimeError("disk on fire")
        return real_make_example(*args, **kwargs)

    monkeypatch.setattr(tfrecord_format, "make_example", failing_make_example)
    for output_dir in (fresh, previous):
        calls.clear()
        with pytest.raises(RuntimeError, match="disk on fire"):
            _convert_sample(root, output_dir, num_shards=2)
    assert snapshot_tree(fresh) == {}
    assert snapshot_tree(previous) == before   # no partial shard, no temp file, same map


def test_atomic_write_keeps_old_content_on_failure(tmp_path):
    path = str(tmp_path / "file.txt")
    with io_utils.atomic_write(path, "w") as handle:
        handle.write("old")
    with pytest.raises(ValueError):
        with io_utils.atomic_write(path, "w") as handle:
            handle.write("new, half")
            raise ValueError("stop")
    assert open(path).read() == "old"
    assert os.listdir(str(tmp_path)) == ["file.txt"]
    umask = os.umask(0)
    os.umask(umask)
    # Ordinary permissions, not the 0600 of a temporary file.
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask


def test_progress_lines(tmp_path):
    stream = io.StringIO()
    with io_utils.Progress(3, "convert train", every_seconds=0.0, stream=stream,
                           unit="images") as progress:
        for _ in range(3):
            progress.update()
    lines = stream.getvalue().splitlines()
    # not a terminal: one line per update (every_seconds=0), then the final line
    assert len(lines) == 4
    assert lines[0].startswith("convert train: 1/3 images, ") and ", ETA " in lines[0]
    assert lines[-1].startswith("convert train: 3/3 images, ") and ", took " in lines[-1]


# ---------------------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------------------

def _run_converter(*args):
    return subprocess.run([sys.executable, CONVERTER, *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)


def test_cli_converts_sample(sample, tmp_path):
    root, _ = sample
    output_dir = str(tmp_path / "cli")
    done = _run_converter("--format", "voc", "--image_dir", os.path.join(root, "JPEGImages"),
                          "--annotations", os.path.join(root, "Annotations"),
                          "--split_file", os.path.join(root, "ImageSets/Main/val.txt"),
                          "--output_dir", output_dir)
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(os.listdir(output_dir)) == ["label_map.json", "val-00000-of-00001.tfrecord"]
    assert label_map.read_label_map(output_dir).splits["val"]["num_images"] == 4
    assert "image_no_objects" in done.stderr   # the summary names every rule


def test_cli_fatal_errors_are_one_line(sample, tmp_path):
    root, _ = sample
    missing = _run_converter("--format", "voc", "--image_dir", str(tmp_path / "nope"),
                             "--annotations", os.path.join(root, "Annotations"),
                             "--output_dir", str(tmp_path / "out"))
    assert missing.returncode != 0
    assert missing.stderr.strip().splitlines() == [
        f"error: --image_dir {tmp_path / 'nope'}: no such directory"]
    assert not os.path.exists(str(tmp_path / "out"))

    no_flag = _run_converter("--format", "voc", "--output_dir", str(tmp_path / "out"))
    assert no_flag.returncode != 0
    assert no_flag.stderr.strip().splitlines() == ["error: --image_dir is required"]


def test_coco_specific_rules(tmp_path):
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    cv2.imwrite(str(image_dir / "x.png"), np.zeros((40, 50, 3), np.uint8))
    coco = {
        "images": [{"id": 5, "file_name": "x.png", "height": 40, "width": 50},
                   {"id": 5, "file_name": "again.png"},
                   {"id": 6, "file_name": "gone.png"}],
        "categories": [{"id": 1, "name": "b"}, {"id": 2, "name": "a"}],
        "annotations": [
            {"id": 1, "image_id": 5, "category_id": 1, "bbox": [1, 2, 10, 20]},
            {"id": 2, "image_id": 5, "category_id": 2, "bbox": [5, 5, 5, 5], "iscrowd": 1},
            {"id": 3, "image_id": 5, "category_id": 9, "bbox": [5, 5, 5, 5]},
            {"id": 4, "image_id": 5, "category_id": 1, "bbox": [5, 5, 0, 5]},
            {"id": 5, "image_id": 5, "category_id": 1, "bbox": [5, 5]},
            {"id": 6, "image_id": 77, "category_id": 1, "bbox": [5, 5, 5, 5]},
            {"id": 7, "image_id": 6, "category_id": 1, "bbox": [5, 5, 5, 5]},
        ]}
    json_path = tmp_path / "coco.json"
    json_path.write_text(json.dumps(coco))
    output_dir = str(tmp_path / "out")
    summary = convert.convert_dataset("coco", str(image_dir), str(json_path), output_dir,
                                      split="val", progress_every_seconds=1e9)
    assert counts_of(summary) == {"duplicate_image": 1, "annotation_invalid": 1,
                                  "image_missing": 1, "box_unknown_class": 1,
                                  "box_degenerate": 1, "box_not_finite": 1,
                                  "object_difficult": 1, "object_ignored": 1}
    (record,) = read_records(output_dir, "val")
    assert record["image_id"] == 5 and record["filename"] == "x.png"
    # Class ids: category names sorted (a=1, b=2), not the COCO category ids.
    assert label_map.read_label_map(output_dir).class_names == ["a", "b"]
    np.testing.assert_array_equal(record["boxes"], [[2, 1, 22, 11], [5, 5, 10, 10]])
    assert record["labels"].tolist() == [2, 1] and record["difficult"].tolist() == [0, 1]
    # A crowd is an ignore region in training, as in Detectron.
    assert record["ignore"].tolist() == [0, 1]


@pytest.mark.parametrize("difficult_as_ignore", [False, True])
def test_ignore_regions_are_flagged_in_the_records(tmp_path, difficult_as_ignore):
    image_dir, xml_dir = tmp_path / "images", tmp_path / "xml"
    image_dir.mkdir()
    xml_dir.mkdir()
    cv2.imwrite(str(image_dir / "a.png"), np.zeros((60, 80, 3), np.uint8))
    write_voc_xml(str(xml_dir / "a.xml"), "a.png", (60, 80), [
        ("RBC", (5, 5, 20, 20), 0), ("RBC", (30, 5, 50, 25), 1), ("WBC", (40, 30, 70, 55), 0)])
    # This project's tag for a doubtful (mined) box: <ignore>1</ignore>.
    text = (xml_dir / "a.xml").read_text()
    last = text.rindex("<difficult>0</difficult>")
    (xml_dir / "a.xml").write_text(
        text[:last] + "<difficult>0</difficult><ignore>1</ignore>" + text[last + 24:])
    output_dir = str(tmp_path / "out")
    summary = convert.convert_dataset("voc", str(image_dir), str(xml_dir), output_dir,
                                      progress_every_seconds=1e9,
                                      difficult_as_ignore=difficult_as_ignore)
    (record,) = read_records(output_dir, "train")
    assert record["labels"].tolist() == [1, 1, 2]
    ignored = [0, int(difficult_as_ignore), 1]
    assert record["ignore"].tolist() == ignored
    # An ignore region is also difficult: evaluation leaves it out like VOC difficult.
    assert record["difficult"].tolist() == [0, 1, 1]
    assert summary["object_ignored"] == sum(ignored)
    # Per class: the objects that train.
    assert summary["objects_per_class"] == {"RBC": 2 - int(difficult_as_ignore), "WBC": 0}


def test_records_without_the_ignore_key_read_as_no_ignore_region():
    example = tfrecord_format.make_example(b"x", "png", 10, 10, "a.png", 1,
                                           [[1, 1, 5, 5]], [1], ["a"])
    del example.features.feature[tfrecord_format.IGNORE]
    serialized = example.SerializeToString()
    assert tfrecord_format.decode_example(serialized)["ignore"].tolist() == [0]
    with seeded_graph().as_default(), tf.Session() as sess:
        parsed = sess.run(tfrecord_format.parse_example(tf.constant(serialized)))
    assert parsed["ignore"].tolist() == [0] and parsed["difficult"].tolist() == [0]


def test_report_lists_a_rule_at_most_so_often_and_counts_every_record(caplog):
    report = annotation.Report(lines_per_rule=3)
    with caplog.at_level("WARNING"):
        for i in range(10):
            report.add("box_degenerate", f"file_{i}.xml", "zero size")
        report.add("image_missing", "x.xml", "no image")
    lines = [r.getMessage() for r in caplog.records]
    assert [line.split(":")[0] for line in lines[:3]] == ["file_0.xml", "file_1.xml",
                                                          "file_2.xml"]
    assert "more [box_degenerate] records are counted" in lines[3]
    assert lines[4].startswith("x.xml") and len(lines) == 5
    assert report.counts["box_degenerate"] == 10 and report.counts["image_missing"] == 1


# ---------------------------------------------------------------------------------------
# YOLO labels
# ---------------------------------------------------------------------------------------

def write_yolo_copy(root, out, split=None, names=("cell", "crystal")):
    """A YOLO copy of the VOC sample at `root`: one "class cx cy w h" line per object
    (normalised, full float precision), class ids in `names` order, data.yaml in `out`.
    split None: every image in out/images and out/labels (the VOC split files apply);
    a split name: its images in out/images/<split> and out/labels/<split> (the usual
    layout). Returns (image folder, labels folder)."""
    images, _ = convert.read_annotations("voc", os.path.join(root, "JPEGImages"),
                                         os.path.join(root, "Annotations"))
    chosen = None
    if split:
        chosen = set(annotation.read_split_file(os.path.join(root, "ImageSets/Main",
                                                             split + ".txt")))
    image_dir = os.path.join(out, "images", *([split] if split else []))
    labels_dir = os.path.join(out, "labels", *([split] if split else []))
    os.makedirs(image_dir)
    os.makedirs(labels_dir)
    for image in images:
        stem = os.path.splitext(image.filename)[0]
        if chosen is not None and stem not in chosen:
            continue
        with open(image.image_path, "rb") as source, \
                open(os.path.join(image_dir, image.filename), "wb") as target:
            target.write(source.read())
        height, width = cv2.imread(image.image_path).shape[:2]
        lines = []
        for obj in image.objects:
            y1, x1, y2, x2 = obj.box
            lines.append(f"{names.index(obj.name)} {(x1 + x2) / 2 / width!r} "
                         f"{(y1 + y2) / 2 / height!r} {(x2 - x1) / width!r} "
                         f"{(y2 - y1) / height!r}")
        with open(os.path.join(labels_dir, stem + ".txt"), "w") as handle:
            handle.write("\n".join(lines) + ("\n" if lines else ""))
    with open(os.path.join(out, "data.yaml"), "w") as handle:
        handle.write("path: .\ntrain: images/train\nval: images/val\n"
                     f"names: {list(names)!r}\n")
    return image_dir, labels_dir


def test_yolo_copy_converts_to_the_same_records_as_its_voc_original(sample, tmp_path):
    """Every image in one folder, the VOC split file: byte-identical records (ids are
    positions in the image folder, as VOC's in the XML folder; the normalised boxes
    come back to the same float32 pixels). Class ids named in another order than
    the label map's (crystal = 0) and read from data.yaml."""
    root, _ = sample
    voc_dir, yolo_dir = str(tmp_path / "voc"), str(tmp_path / "yolo")
    _convert_sample(root, voc_dir)
    image_dir, labels_dir = write_yolo_copy(root, str(tmp_path / "tree"),
                                            names=("crystal", "cell"))
    summary = convert.convert_dataset(
        "yolo", image_dir, labels_dir, yolo_dir,
        split_file=os.path.join(root, "ImageSets/Main/train.txt"),
        progress_every_seconds=1e9)
    assert summary["images_written"] == 8 and counts_of(summary) == {}
    same_files(voc_dir, yolo_dir)


def test_yolo_layout_through_the_command_lines(sample, tmp_path):
    """DATA/images/train + DATA/labels/train + DATA/data.yaml: the converter finds the
    names, the records hold the VOC boxes and labels (ids: positions in the split's own
    image folder), and make_references crops the same objects as from VOC."""
    root, _ = sample
    data = tmp_path / "DATA"
    image_dir, labels_dir = write_yolo_copy(root, str(data), split="train")
    done = _run_converter("--format", "yolo", "--image_dir", image_dir, "--annotations",
                          labels_dir, "--split", "train", "--output_dir",
                          str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr[-2000:]
    _convert_sample(root, str(tmp_path / "voc"))
    voc = {r["filename"]: r for r in read_records(str(tmp_path / "voc"), "train")}
    yolo = read_records(str(tmp_path / "out"), "train")
    assert sorted(r["image_id"] for r in yolo) == list(range(1, 9))
    assert sorted(r["filename"] for r in yolo) == sorted(voc)
    for record in yolo:
        expected = voc[record["filename"]]
        np.testing.assert_array_equal(record["boxes"], expected["boxes"])
        assert record["labels"].tolist() == expected["labels"].tolist()
        assert record["image"] == expected["image"]

    references = {}
    for fmt, images, annotations, split_file in (
            ("voc", os.path.join(root, "JPEGImages"), os.path.join(root, "Annotations"),
             os.path.join(root, "ImageSets/Main/train.txt")),
            ("yolo", image_dir, labels_dir, None)):
        out = str(tmp_path / f"refs_{fmt}")
        args = ["--format", fmt, "--image_dir", images, "--annotations", annotations,
                "--output_dir", out, "--per_class", "2"]
        done = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "tools",
                                                            "make_references.py"), *args]
                              + (["--split_file", split_file] if split_file else []),
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        with open(os.path.join(out, "references.json")) as handle:
            references[fmt] = json.load(handle)
    crops = {fmt: sorted((name, crop["image"], tuple(crop["box"]))
                         for name, chosen in found["classes"].items() for crop in chosen)
             for fmt, found in references.items()}
    assert len(crops["voc"]) == 4
    for (name_a, image_a, box_a), (name_b, image_b, box_b) in zip(crops["voc"],
                                                                  crops["yolo"]):
        assert (name_a, image_a) == (name_b, image_b)
        np.testing.assert_allclose(box_a, box_b, atol=1e-6)


def test_yolo_rules(tmp_path):
    """Malformed lines, unknown class ids, boxes outside [0, 1], an empty label file,
    an image without a label file and a label file without an image: each reported
    under its rule and counted; classes.txt names the ids."""
    image_dir, labels_dir = tmp_path / "images", tmp_path / "labels"
    image_dir.mkdir()
    labels_dir.mkdir()
    for stem in ("a", "empty", "unlabelled"):
        cv2.imwrite(str(image_dir / f"{stem}.png"), np.zeros((40, 50, 3), np.uint8))
    (labels_dir / "a.txt").write_text(
        "0 0.5 0.5 0.2 0.5\n"            # kept: x 20..30, y 10..30
        "1 0.1 0.5 0.4 0.5\n"            # x -5..15: clipped to 0..15
        "0 1.5 0.5 0.2 0.2\n"            # entirely right of the image
        "7 0.5 0.5 0.1 0.1\n"            # class id 7: no name
        "0 0.5 0.5 -0.1 0.1\n"           # negative width
        "0 0.5 0.5 0.1\n"                # four values
        "one 0.5 0.5 0.1 0.1\n"          # not a number
        "\n")
    (labels_dir / "empty.txt").write_text("")
    (labels_dir / "orphan.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    (tmp_path / "classes.txt").write_text("b\na\n")
    output_dir = str(tmp_path / "out")
    summary = convert.convert_dataset("yolo", str(image_dir), str(labels_dir), output_dir,
                                      split="train", progress_every_seconds=1e9)
    assert counts_of(summary) == {"annotation_invalid": 4, "box_clipped": 1,
                                  "box_outside": 1, "box_unknown_class": 1,
                                  "box_degenerate": 1, "image_no_objects": 1}
    (record,) = read_records(output_dir, "train")
    assert record["filename"] == "a.png" and record["image_id"] == 1
    assert label_map.read_label_map(output_dir).class_names == ["a", "b"]
    np.testing.assert_allclose(record["boxes"], [[10, 20, 30, 30], [10, 0, 30, 15]])
    assert record["labels"].tolist() == [2, 1]          # "b" (YOLO id 0), "a" (id 1)

    (tmp_path / "classes.txt").unlink()
    with pytest.raises(annotation.ConversionError, match="give --class_names .* or put "
                       "data.yaml or classes.txt in"):
        convert.convert_dataset("yolo", str(image_dir), str(labels_dir), output_dir)
    broken = tmp_path / "data.yaml"
    broken.write_text("names: {0: b\n")
    with pytest.raises(annotation.ConversionError, match="data.yaml: not valid YAML"):
        convert.convert_dataset("yolo", str(image_dir), str(labels_dir), output_dir)
    broken.write_text("nc: 2\n")
    with pytest.raises(annotation.ConversionError, match="data.yaml: no class names"):
        convert.convert_dataset("yolo", str(image_dir), str(labels_dir), output_dir)
    broken.write_text("names:\n  0: b\n  1: a\n")
    assert formats.yolo.read_class_names(str(labels_dir)) == {0: "b", 1: "a"}
    assert formats.yolo.read_class_names(str(labels_dir), ["x", "y"]) == {0: "x", 1: "y"}
