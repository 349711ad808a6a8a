"""A small synthetic Pascal-VOC dataset: the repo's sample data for tests and the demo.

    generate_voc_dataset(out_dir, num_train=24, num_val=8, seed=0) -> dict
    python -m data.sample.generate --out_dir D [--num_train N --num_val N --seed S]

Two classes a tiny CNN can tell apart by brightness and shape, on a textured, noisy
background:
    cell     bright filled ellipses, radii 8-20 px
    crystal  dark filled squares or diamonds, 10-30 px across
and, only when asked for (classes=...), a third for few-shot tests (a new class added
from references to a model trained on the other two):
    spore    bright yellow-green filled triangles, 12-28 px across
1-4 objects per image, never overlapping (3 px apart at least), fully inside the image;
image sizes vary from 128x128 to 200x160, portrait and landscape. Every box is the exact
bounding box of the drawn pixels ([xmin, xmax) in VOC corner numbers). The same seed
gives byte-identical files.

Layout (VOC):  JPEGImages/sample_0000.jpg  Annotations/sample_0000.xml
               ImageSets/Main/train.txt    ImageSets/Main/val.txt
"""
import os
import sys
import xml.etree.ElementTree as ElementTree

import cv2
import numpy as np

from libs.base import cli
from libs.base.io_utils import atomic_write

CLASSES = ("cell", "crystal")
# (width, height): square, landscape and portrait, so resize-and-pad is exercised.
IMAGE_SIZES = ((128, 128), (160, 128), (128, 160), (200, 160), (144, 144), (160, 200))
MAX_OBJECTS = 4
GAP = 3             # minimum free pixels between two objects
JPEG_QUALITY = 95


def _background(rng, height, width):
    """Mid-grey, slightly tinted, with a smooth low-frequency texture and pixel noise."""
    tint = rng.uniform(120, 150, size=3)
    coarse = rng.normal(0, 1, size=(height // 16 + 2, width // 16 + 2, 3))
    texture = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC) * 10.0
    noise = rng.normal(0, 5, size=(height, width, 3))
    return tint + texture + noise


def _cell_mask(rng, height, width):
    rx, ry = int(rng.integers(8, 21)), int(rng.integers(8, 21))
    cx = int(rng.integers(rx + 1, width - rx - 1))
    cy = int(rng.integers(ry + 1, height - ry - 1))
    mask = np.zeros((height, width), np.uint8)
    cv2.ellipse(mask, (cx, cy), (rx, ry), 0, 0, 360, 255, thickness=-1)
    return mask


def _crystal_mask(rng, height, width):
    side = int(rng.integers(10, 31))
    half = side / 2.0
    cx = rng.uniform(half + 1, width - half - 1)
    cy = rng.uniform(half + 1, height - half - 1)
    if rng.random() < 0.5:
        corners = [(cx - half, cy - half), (cx + half, cy - half),
                   (cx + half, cy + half), (cx - half, cy + half)]
    else:
        corners = [(cx, cy - half), (cx + half, cy), (cx, cy + half), (cx - half, cy)]
    mask = np.zeros((height, width), np.uint8)
    cv2.fillPoly(mask, [np.round(corners).astype(np.int32)], 255)
    return mask


def _spore_mask(rng, height, width):
    side = int(rng.integers(12, 29))
    half = side / 2.0
    cx = rng.uniform(half + 1, width - half - 1)
    cy = rng.uniform(half + 1, height - half - 1)
    angle = rng.uniform(0, 2 * np.pi)
    corners = [(cx + half * np.cos(angle + k * 2 * np.pi / 3),
                cy + half * np.sin(angle + k * 2 * np.pi / 3)) for k in range(3)]
    mask = np.zeros((height, width), np.uint8)
    cv2.fillPoly(mask, [np.round(corners).astype(np.int32)], 255)
    return mask


# class -> (mask drawer, mean RGB colour)
SHAPES = {"cell": (_cell_mask, (235, 205, 215)),
          "crystal": (_crystal_mask, (55, 65, 110)),
          "spore": (_spore_mask, (215, 230, 150))}


def _mask_box(mask):
    """(xmin, ymin, xmax, ymax) of the drawn pixels, max exclusive."""
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _apart(box, others):
    x1, y1, x2, y2 = box
    return all(x2 + GAP <= ox1 or ox2 + GAP <= x1 or y2 + GAP <= oy1 or oy2 + GAP <= y1
               for ox1, oy1, ox2, oy2 in others)


def _draw_image(rng, index, classes=CLASSES):
    width, height = IMAGE_SIZES[int(rng.integers(len(IMAGE_SIZES)))]
    image = _background(rng, height, width)
    num_objects = int(rng.integers(1, MAX_OBJECTS + 1))
    objects = []
    for k in range(num_objects):
        # The first object cycles through the classes, so any len(classes) consecutive
        # images contain every class.
        if k == 0:
            name = classes[index % len(classes)]
        else:
            name = classes[int(rng.integers(len(classes)))]
        draw_mask, mean_colour = SHAPES[name]
        for _ in range(50):  # rejection sampling; a crowded image just gets fewer objects
            mask = draw_mask(rng, height, width)
            box = _mask_box(mask)
            if _apart(box, [b for _, b in objects]):
                break
        else:
            continue
        colour = np.array(mean_colour) + rng.uniform(-10, 10, size=3)
        inside = mask > 0
        image[inside] = colour + rng.normal(0, 4, size=(int(inside.sum()), 3))
        objects.append((name, box))
    rgb = np.clip(np.round(image), 0, 255).astype(np.uint8)
    return rgb, objects


def _voc_xml(filename, width, height, objects):
    root = ElementTree.Element("annotation")
    ElementTree.SubElement(root, "folder").text = "JPEGImages"
    ElementTree.SubElement(root, "filename").text = filename
    source = ElementTree.SubElement(root, "source")
    ElementTree.SubElement(source, "database").text = "comparison-detector synthetic sample"
    size = ElementTree.SubElement(root, "size")
    ElementTree.SubElement(size, "width").text = str(width)
    ElementTree.SubElement(size, "height").text = str(height)
    ElementTree.SubElement(size, "depth").text = "3"
    ElementTree.SubElement(root, "segmented").text = "0"
    for name, (x1, y1, x2, y2) in objects:
        element = ElementTree.SubElement(root, "object")
        ElementTree.SubElement(element, "name").text = name
        ElementTree.SubElement(element, "pose").text = "Unspecified"
        ElementTree.SubElement(element, "truncated").text = "0"
        ElementTree.SubElement(element, "difficult").text = "0"
        box = ElementTree.SubElement(element, "bndbox")
        for key, value in (("xmin", x1), ("ymin", y1), ("xmax", x2), ("ymax", y2)):
            ElementTree.SubElement(box, key).text = str(value)
    ElementTree.indent(root)
    return ElementTree.tostring(root, encoding="utf-8") + b"\n"


def generate_voc_dataset(out_dir, num_train=24, num_val=8, seed=0, classes=CLASSES):
    """Writes the sample dataset into out_dir (VOC layout); returns what it wrote.

    classes: names from SHAPES (default cell and crystal, the demo's data).

    Returns {"classes": [...], "train": [ids], "val": [ids],
             "objects": {id: [(name, (xmin, ymin, xmax, ymax)), ...]},
             "sizes": {id: (height, width)}}.
    """
    unknown = [name for name in classes if name not in SHAPES]
    if unknown or not classes:
        raise ValueError(f"unknown sample classes {unknown}; known: {sorted(SHAPES)}")
    if num_train < 0 or num_val < 0 or num_train + num_val == 0:
        raise ValueError(f"need at least one image (num_train={num_train}, "
                         f"num_val={num_val})")
    rng = np.random.default_rng(seed)
    image_dir = os.path.join(out_dir, "JPEGImages")
    xml_dir = os.path.join(out_dir, "Annotations")
    sets_dir = os.path.join(out_dir, "ImageSets", "Main")
    for directory in (image_dir, xml_dir, sets_dir):
        os.makedirs(directory, exist_ok=True)

    result = {"classes": list(classes), "train": [], "val": [], "objects": {}, "sizes": {}}
    for index in range(num_train + num_val):
        image_id = f"sample_{index:04d}"
        rgb, objects = _draw_image(rng, index, tuple(classes))
        height, width = rgb.shape[:2]
        ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                                [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise RuntimeError("OpenCV cannot encode JPEG")
        with atomic_write(os.path.join(image_dir, image_id + ".jpg")) as handle:
            handle.write(jpeg.tobytes())
        with atomic_write(os.path.join(xml_dir, image_id + ".xml")) as handle:
            handle.write(_voc_xml(image_id + ".jpg", width, height, objects))
        result["train" if index < num_train else "val"].append(image_id)
        result["objects"][image_id] = objects
        result["sizes"][image_id] = (height, width)

    for split in ("train", "val"):
        with atomic_write(os.path.join(sets_dir, split + ".txt"), "w") as handle:
            handle.write("".join(image_id + "\n" for image_id in result[split]))
    return result


def _define_flags():
    from absl import flags
    flags.DEFINE_string("out_dir", None, "Where to write the VOC-layout sample dataset.")
    flags.DEFINE_integer("num_train", 24, "Images in the train split.")
    flags.DEFINE_integer("num_val", 8, "Images in the val split.")
    flags.DEFINE_integer("seed", 0, "Random seed; the same seed gives identical files.")
    flags.DEFINE_list("classes", list(CLASSES), f"Classes to draw, from {sorted(SHAPES)}.")
    return flags.FLAGS


def main(argv):
    from absl import flags
    del argv
    flag_values = flags.FLAGS
    if not flag_values.out_dir:
        print("error: --out_dir is required", file=sys.stderr, flush=True)
        return 2
    try:
        result = generate_voc_dataset(flag_values.out_dir, flag_values.num_train,
                                      flag_values.num_val, flag_values.seed,
                                      flag_values.classes)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    num_objects = sum(len(objects) for objects in result["objects"].values())
    print(f"wrote {len(result['train'])} train + {len(result['val'])} val images "
          f"({num_objects} objects, classes {', '.join(result['classes'])}) "
          f"to {flag_values.out_dir}")
    return 0


def run():
    cli.run_tool(_define_flags, main)


if __name__ == "__main__":
    run()
