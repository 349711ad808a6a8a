"""Annotation formats: one module each, behind one registry (registry.py).

    from data.io import formats
    formats.get("voc").read(image_dir, annotations, split_file, report) -> (images, names)
    formats.names() -> ("voc", "coco", "yolo")        the --format choices

A new format is one module in this folder: a check_inputs and a read function (what
they take and return: registry.py; what the ImageAnnotations they return must hold:
data/io/annotation.py) and one registry.register(registry.Format(...)) call, plus its
name in the import below. Every tool then offers it (--format, --annotations' help)
and its images go through the same image and box rules (data/io/cleaning.py) and the
same record writer (data/io/convert.py): a reader only reads.
"""
from data.io.formats.registry import Format, get, names, register, registered

# The built-in formats register themselves when imported; this order is --format's
# (kept from import sorters).
# isort: off
from data.io.formats import voc, coco, yolo  # noqa: E402
# isort: on

__all__ = ["Format", "get", "names", "register", "registered", "voc", "coco", "yolo"]
