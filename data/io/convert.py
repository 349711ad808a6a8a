"""Annotations in any registered format -> validated, sharded TFRecords + label_map.json.

    convert_dataset(fmt, image_dir, annotations, output_dir, split_file=None, split=None,
                    classes=None, num_shards=1) -> summary dict
    write_records(images, labels, output_dir, split, num_shards=1) -> summary dict
    read_annotations(fmt, image_dir, annotations, split_file=None) -> (images, names)

write `<output_dir>/<split>-00000-of-0000N.tfrecord` (schema: data/io/tfrecord_format.py)
and `<output_dir>/label_map.json` (data/io/label_map.py). convert_dataset reads a whole
split and picks the label map; write_records writes any list of annotated images read
by read_annotations (a filtered or sampled one: data/io/fewshot.py) under a given label
map. Both apply the same rules and the same atomic publishing.

Where the parts are
- data/io/formats/: one reader per annotation format (voc, coco, yolo), chosen by name
  through its registry; each module says how its boxes, class names, image ids and
  split-file entries are read.
- data/io/annotation.py: what readers produce (ImageAnnotation), the rules (RULES) and
  the Report that counts them.
- data/io/cleaning.py: the image and box rules, applied here to every format alike.
- libs/base/images.py: decoding, EXIF orientation, the bytes a record stores.

Conventions of the output
- Records are written in image-id order (write_records: in the order given), record k
  into shard k % num_shards. Output bytes depend only on the input (no timestamps, no
  randomness).
- Atomic: every shard is written to a hidden temporary file and all are renamed
  together at the end; the label map is written last. A failure leaves the output
  directory as it was. Shards of an earlier conversion of the same split that the new
  one does not replace (a different --num_shards) are removed after the rename, so
  `<split>-*.tfrecord` always means exactly one conversion.

Validation: every rule of data/io/annotation.py's RULES is applied to every image and
object; each occurrence is logged as one warning line "<file>: <what> -> <action>" and
counted; the counts are the summary. The readers and the image loader are shared with
data/io/reference_set.py.
"""
import collections
import os

from absl import logging

from data.io import annotation, cleaning, formats
from data.io import label_map as label_map_lib
from libs.base.io_utils import PendingFile, Progress


def check_inputs(fmt, image_dir, annotations, split_file=None):
    """Raises ConversionError with one line when an input path is unusable."""
    chosen = formats.get(fmt)
    if not image_dir:
        raise annotation.ConversionError("--image_dir is required")
    if not os.path.isdir(image_dir):
        raise annotation.ConversionError(f"--image_dir {image_dir}: no such directory")
    if not annotations:
        kinds = ", ".join(f"{f.label}: {f.annotations_short}" for f in formats.registered())
        raise annotation.ConversionError(f"--annotations is required ({kinds})")
    chosen.check_inputs(image_dir, annotations)
    if split_file and not os.path.isfile(split_file):
        raise annotation.ConversionError(f"--split_file {split_file}: no such file")


def read_annotations(fmt, image_dir, annotations, split_file=None, report=None,
                     class_names=None):
    """The reader of format `fmt` -> ([ImageAnnotation] in image-id order, the class
    names the annotations declare or use), after check_inputs.

    class_names: YOLO's names of class ids 0, 1, ... (formats.yolo.read_class_names)."""
    check_inputs(fmt, image_dir, annotations, split_file)
    return formats.get(fmt).read(image_dir, annotations, split_file,
                                 report or annotation.Report(), class_names=class_names)


# ---------------------------------------------------------------------------------------
# Conversion
# ---------------------------------------------------------------------------------------

def default_split(split_file):
    return annotation.file_stem(split_file) if split_file else "train"


def parse_classes(text):
    """'a,b, c' -> ['a', 'b', 'c'] (None for empty)."""
    if not text:
        return None
    return [name.strip() for name in text.split(",") if name.strip()] or None


def format_summary(summary):
    lines = [f"{summary['split']}: {summary['images_read']} images read, "
             f"{summary['images_written']} written with {summary['objects_written']} "
             f"objects into {len(summary['files'])} shard(s) in {summary['output_dir']}; "
             f"classes: {', '.join(summary['classes'])}"]
    # Each rule applied gets a line with its count and action; the others share one
    # line, so that a clean conversion is two lines and still names every rule checked.
    applied = [rule for rule in annotation.RULES if summary[rule]]
    width = max(len(rule) for rule in annotation.RULES)
    for rule in applied:
        lines.append(f"  {rule:<{width}} {summary[rule]:>6}   {annotation.RULES[rule]}")
    unapplied = [rule for rule in annotation.RULES if rule not in applied]
    if unapplied:
        lines.append(f"  0 each: {', '.join(unapplied)}")
    return "\n".join(lines)


def _check_output_names(split, num_shards):
    if not isinstance(num_shards, int) or num_shards < 1:
        raise annotation.ConversionError(
            f"--num_shards must be a positive integer, got {num_shards!r}")
    if not split or os.sep in split or split.startswith("."):
        raise annotation.ConversionError(f"--split {split!r} is not a usable file-name prefix")


def convert_dataset(fmt, image_dir, annotations, output_dir, split_file=None, split=None,
                    classes=None, num_shards=1, progress_every_seconds=None,
                    class_names=None, difficult_as_ignore=False):
    """Converts one split; see the module docstring. Returns the summary dict:

    split, output_dir, files, classes (id order), images_read (annotations read),
    images_written, objects_written, objects_per_class, and one count per rule of RULES.
    Raises ConversionError for fatal problems (nothing is written then). YOLO's class
    ids are named by class_names (--class_names), else by data.yaml / classes.txt;
    `classes` (--classes) only gives the label map's ids and which classes are kept.
    difficult_as_ignore (--difficult_as_ignore): VOC difficult objects (COCO crowds
    always are) become ignore regions instead of training as objects.
    """
    check_inputs(fmt, image_dir, annotations, split_file)
    split = split or default_split(split_file)
    _check_output_names(split, num_shards)

    report = annotation.Report()
    images, found_names = read_annotations(fmt, image_dir, annotations, split_file, report,
                                           class_names=class_names)
    if difficult_as_ignore:
        for image in images:
            for obj in image.objects:
                obj.ignore = obj.ignore or obj.difficult
    os.makedirs(output_dir, exist_ok=True)
    map_path = label_map_lib.label_map_path(output_dir)
    existing = None
    try:
        if os.path.exists(map_path):
            existing = label_map_lib.read_label_map(map_path)
        labels = label_map_lib.choose_classes(found_names, classes, existing)
    except label_map_lib.LabelMapError as exc:
        raise annotation.ConversionError(str(exc)) from None
    if existing is not None:
        logging.info("reusing the class ids of %s: %s", map_path, labels.class_names)
    return write_records(images, labels, output_dir, split, num_shards=num_shards,
                         report=report, progress_every_seconds=progress_every_seconds)


def write_records(images, labels, output_dir, split, num_shards=1, report=None,
                  progress_every_seconds=5.0):
    """Writes annotated images as the TFRecord shards of `split` + the label map.

    images: [ImageAnnotation] in the order to write (already selected or filtered by
    the caller: a whole split, a K-shot set, base classes only). labels: the LabelMap
    the records use; boxes of classes it does not list are dropped and reported. Every
    image and box rule applies here, counted in `report` (a Report, possibly holding the
    counts of the reading step). Publishing is atomic as the module docstring says.
    Returns the summary dict of convert_dataset; raises ConversionError when no image
    survives (nothing is written then).
    """
    # TensorFlow is imported here, not at module level: its import takes seconds and
    # prints C++ banners, which would bury the one-line error of a bad flag.
    from data.io import tfrecord_format
    from libs.base.tf_compat import tf

    _check_output_names(split, num_shards)
    report = report or annotation.Report()
    os.makedirs(output_dir, exist_ok=True)
    names = [tfrecord_format.shard_name(split, i, num_shards) for i in range(num_shards)]
    pending = [PendingFile(os.path.join(output_dir, name)) for name in names]
    writers = []
    images_written = objects_written = 0
    per_class = collections.Counter()
    try:
        writers = [tf.io.TFRecordWriter(p.temp_path) for p in pending]
        with Progress(len(images), f"convert {split}", progress_every_seconds,
                      unit="images") as progress:
            for image in images:
                progress.update()
                result = cleaning.load_and_clean(image, labels.class_names, report)
                if result is None:
                    continue
                loaded, objects = result
                if not objects:
                    what = "has no valid object left" if image.objects else \
                        "has no object annotated"
                    report.add("image_no_objects", image.source, f"{image.filename} {what}")
                    continue
                example = tfrecord_format.make_example(
                    encoded=loaded.encoded, image_format=loaded.image_format,
                    height=loaded.height, width=loaded.width, filename=image.filename,
                    image_id=image.image_id, boxes=[o.box for o in objects],
                    labels=[labels.id_of(o.name) for o in objects],
                    class_texts=[o.name for o in objects],
                    difficult=[o.difficult for o in objects],
                    ignore=[o.ignore for o in objects])
                writers[images_written % num_shards].write(example.SerializeToString())
                images_written += 1
                objects_written += len(objects)
                # Per class: the objects that train (ignore regions: the rule's count).
                per_class.update(o.name for o in objects if not o.ignore)
        for writer in writers:
            writer.close()
        writers = []
        if images_written == 0:
            _log_summary(_summary(split, output_dir, [], labels, len(images), 0, 0,
                                  per_class, report))
            raise annotation.ConversionError(
                f"no image of split {split!r} survived validation "
                f"({len(images)} listed; see the warnings above); nothing written")
        for item in pending:
            item.commit()
    except BaseException:
        for writer in writers:
            writer.close()
        for item in pending:
            item.discard()
        raise

    # The new shards are in place: drop shards of an earlier conversion of this split
    # that were not overwritten, then publish the label map.
    for name in sorted(os.listdir(output_dir)):
        if tfrecord_format.is_shard_of(name, split) and name not in names:
            os.remove(os.path.join(output_dir, name))
            logging.info("removed %s (left from an earlier conversion of %s)", name, split)
    labels = labels.with_split(split, images_written, objects_written, names)
    label_map_lib.write_label_map(label_map_lib.label_map_path(output_dir), labels)

    summary = _summary(split, output_dir, names, labels, len(images), images_written,
                       objects_written, per_class, report)
    _log_summary(summary)
    return summary


def _summary(split, output_dir, files, labels, images_read, images_written,
             objects_written, per_class, report):
    summary = collections.OrderedDict(
        split=split, output_dir=output_dir, files=list(files), classes=labels.class_names,
        images_read=images_read, images_written=images_written,
        objects_written=objects_written,
        objects_per_class={name: per_class[name] for name in labels.class_names})
    summary.update(report.counts)
    return summary


def _log_summary(summary):
    for line in format_summary(summary).splitlines():
        logging.info("%s", line)
