"""Pascal VOC: a folder of XML files, one per image (--format voc).

    <annotation><filename>x.jpg</filename><size><width>W</width><height>H</height></size>
      <object><name>cat</name><difficult>0</difficult>
        <bndbox><xmin>..</xmin><ymin>..</ymin><xmax>..</xmax><ymax>..</ymax></bndbox>
      </object> ...
    </annotation>

- Boxes: the corners are taken as written, [ymin, xmin, ymax, xmax] (the TF Object
  Detection API convention, no 1-based shift), on the stored pixels: an image's EXIF
  orientation is not applied, only reported (image_orientation_ignored).
- Images: <filename> in --image_dir; when it is stale or lacks the extension (many
  exported datasets), the image named like the XML file (the VOC convention).
  <size> is checked against the image (size_mismatch); 0 means unknown (labelImg).
- Image ids: the 1-based position of the XML file in the sorted listing of the
  annotation folder, so train and val converted from one folder never share an id and
  re-running gives the same ids.
- --split_file: file stems, one per line (ImageSets/Main/train.txt; the first column
  of ImageSets/Main/<class>_train.txt lines).
- Classes: the names found, sorted; <difficult>1</difficult> is object_difficult;
  <ignore>1</ignore> (this project's tag: tools/mine_labels.py writes it for doubtful
  boxes) is object_ignored, an ignore region in training.
"""
import math
import os
import xml.etree.ElementTree as ElementTree

from data.io import annotation
from data.io.formats import registry


def _xml_text(element, path, default=None):
    child = element.find(path)
    if child is None or child.text is None:
        return default
    return child.text.strip()


def _parse_voc_xml(xml_path):
    """-> (filename or None, (height, width) or None, [ObjectAnnotation]); raises on bad XML."""
    root = ElementTree.parse(xml_path).getroot()
    if root.tag != "annotation":
        raise ValueError(f"root element is <{root.tag}>, expected <annotation>")
    filename = _xml_text(root, "filename")
    size = None
    width = annotation.float_or_nan(_xml_text(root, "size/width"))
    height = annotation.float_or_nan(_xml_text(root, "size/height"))
    if width > 0 and height > 0:  # labelImg and others write 0 when they do not know
        size = (int(round(height)), int(round(width)))
    objects = []
    for index, element in enumerate(root.findall("object")):
        name = _xml_text(element, "name", default="")
        difficult = _xml_text(element, "difficult", default="0")
        ignore = _xml_text(element, "ignore", default="0")
        box_element = element.find("bndbox")
        problem = None
        if box_element is None:
            box, problem = (math.nan,) * 4, "has no <bndbox>"
        else:
            box = tuple(annotation.float_or_nan(_xml_text(box_element, key))
                        for key in ("ymin", "xmin", "ymax", "xmax"))
        objects.append(annotation.ObjectAnnotation(
            name=name, box=box, difficult=annotation.float_or_nan(difficult) == 1,
            ignore=annotation.float_or_nan(ignore) == 1, index=index, problem=problem))
    return filename, size, objects


def read(image_dir, annotations_dir, split_file, report, class_names=None):
    """Reads a Pascal-VOC folder of XML files -> ([ImageAnnotation] in image-id order,
    the class names found, sorted). class_names: unused (VOC names its classes)."""
    all_stems = sorted(annotation.file_stem(name) for name in os.listdir(annotations_dir)
                       if name.lower().endswith(".xml"))
    ids = {stem: position + 1 for position, stem in enumerate(all_stems)}
    if split_file:
        stems = annotation.dedupe(annotation.read_split_file(split_file), split_file, report)
    else:
        stems = all_stems
    images_by_stem = annotation.image_index(image_dir)
    images = []
    for stem in sorted(stems, key=lambda s: ids.get(s, 0)):
        xml_path = os.path.join(annotations_dir, stem + ".xml")
        if stem not in ids:
            report.add("annotation_invalid", split_file or annotations_dir,
                       f"no annotation file {xml_path}")
            continue
        try:
            filename, size, objects = _parse_voc_xml(xml_path)
        except (ElementTree.ParseError, ValueError, OSError) as exc:
            report.add("annotation_invalid", xml_path, f"unreadable XML ({exc})")
            continue
        image_path = None
        if filename and os.path.isfile(os.path.join(image_dir, filename)):
            image_path = os.path.join(image_dir, filename)
        else:
            # The <filename> of many exported datasets is stale or lacks the extension;
            # the file named like the XML is the VOC convention.
            for candidate in images_by_stem.get(stem, []) + images_by_stem.get(
                    annotation.file_stem(filename or ""), []):
                image_path = os.path.join(image_dir, candidate)
                filename = candidate
                break
        images.append(annotation.ImageAnnotation(
            image_id=ids[stem], filename=filename or stem, image_path=image_path,
            source=xml_path, annotated_size=size, objects=objects))
    names = sorted({obj.name for image in images for obj in image.objects
                    if obj.name.strip()})
    return images, names


def check_inputs(image_dir, annotations):
    registry.require_folder(annotations, "VOC annotations are a folder of XML files")


FORMAT = registry.register(registry.Format(
    name="voc", label="VOC", annotations_help="the folder of XML files",
    annotations_short="the XML folder", split_entries="file stems",
    check_inputs=check_inputs, read=read))
