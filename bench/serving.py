"""Latency of the exported SavedModel: cached prototypes vs the reference branch per call.

    python bench/serving.py --cfg cfgs/tiny_cpu.py --images 20
    python bench/serving.py --cfg cfgs/res101_fewshot.py --classes 11 --supports 3 \
        --images 5 [--image_dir ../shared/datasets/bccd/JPEGImages] [--checkpoint P]

Exports the same checkpoint twice with libs.serving.export: once with the prototypes computed
at export and stored (what tools/export_savedmodel.py writes), once with the reference
images stored and the reference branch rerun at every call (the notebook's way). Both
are loaded as libs.serving.export.Detector and called on the same images one at a time,
alternating A/B so machine noise hits both alike. Prints the median seconds per image
of each, their ratio, the one-off export cost and the peak RSS.

Without --checkpoint the weights are random (a freshly initialised checkpoint): the
work per image is the same as a trained model's except for how many detections pass
the score threshold, a small part of the time. Reference images are random pixels.
"""
import json
import os
import resource
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from libs.train import runs  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("cfg", None, "Config file.")
flags.DEFINE_multi_string("set", [], "Config override FIELD=VALUE.")
flags.DEFINE_integer("classes", None, "Number of object classes (default: the config's "
                     "NUM_CLASS - 1).")
flags.DEFINE_integer("supports", None, "Reference images per class (default: "
                     "NUM_SUPPORTS).")
flags.DEFINE_string("checkpoint", None, "A trained checkpoint of this config "
                    "(default: random weights).")
flags.DEFINE_string("image_dir", None, "Folder of test images (default: random "
                    "640x480 JPEGs, the BCCD size).")
flags.DEFINE_integer("images", 10, "Images timed per model.")
flags.DEFINE_integer("warmup", 2, "Untimed calls per model first.")
flags.DEFINE_bool("json", False, "Print one JSON line.")


def _random_checkpoint(run, directory):
    """A checkpoint of freshly initialised weights (every variable the model has)."""
    # Here, not at the top: TensorFlow's import (seconds) follows argument parsing.
    from libs.base.tf_compat import seeded_graph, tf
    from libs.serving import export
    params = runs.model_params(run)
    graph = seeded_graph(run.cfg.SEED)
    with graph.as_default():
        export.build_serving_graph(params)
        with tf.Session() as session:
            session.run(tf.global_variables_initializer())
            return tf.train.Saver().save(session, os.path.join(directory, "model.ckpt"),
                                         global_step=0)


def _test_images(count):
    import cv2

    # Here, not at the top: TensorFlow's import (seconds) follows argument parsing.
    from libs.base import images as images_lib
    if FLAGS.image_dir:
        names = sorted(n for n in os.listdir(FLAGS.image_dir)
                       if os.path.splitext(n)[1].lower() in images_lib.IMAGE_EXTENSIONS)
        return [images_lib.load_image(os.path.join(FLAGS.image_dir, n)).encoded
                for n in names[:count]]
    rng = np.random.default_rng(0)
    return [cv2.imencode(".jpg", rng.integers(0, 255, (480, 640, 3), np.uint8))[1].tobytes()
            for _ in range(count)]


def main(argv):
    del argv
    # Here, not at the top: TensorFlow's import (seconds) follows argument parsing.
    from libs.configs import load_config, parse_overrides
    from libs.serving import export

    overrides = parse_overrides(FLAGS.set)
    if FLAGS.classes:
        overrides["NUM_CLASS"] = FLAGS.classes + 1
    if FLAGS.supports:
        overrides["NUM_SUPPORTS"] = FLAGS.supports
    cfg = load_config(FLAGS.cfg, overrides)
    if cfg.NUM_TRAIN_IMAGES is None:
        cfg = cfg.replace(NUM_TRAIN_IMAGES=1)
    classes = [f"class_{i}" for i in range(1, cfg.NUM_CLASS)]
    rng = np.random.default_rng(1)
    references = rng.integers(0, 255, (len(classes), cfg.NUM_SUPPORTS, cfg.REFERENCE_SIDE,
                                       cfg.REFERENCE_SIDE, 3), np.uint8)
    work = tempfile.mkdtemp(prefix="bench_serving_")
    run = runs.Run(cfg, None, work, classes, references)   # random references, no dataset
    checkpoint = FLAGS.checkpoint or _random_checkpoint(run, work)

    start = time.perf_counter()
    export.export_saved_model(run, checkpoint, os.path.join(work, "cached"))
    export_cached_s = time.perf_counter() - start
    export.export_saved_model(run, checkpoint, os.path.join(work, "per_call"),
                              cache_prototypes=False)
    images = _test_images(FLAGS.images)
    models = {"cached": export.Detector.from_saved_model(os.path.join(work, "cached")),
              "per_call": export.Detector.from_saved_model(os.path.join(work, "per_call"))}
    for model in models.values():
        for image in images[:FLAGS.warmup] or images[:1]:
            model.detect([image])
    times = {name: [] for name in models}
    for image in images:
        for name, model in models.items():
            start = time.perf_counter()
            model.detect([image])
            times[name].append(time.perf_counter() - start)
    # The work a call did: proposals that are real boxes (not padding) per image.
    cached_model = models["cached"]
    graph = cached_model.session.graph
    proposals = [cached_model.session.run(
        graph.get_tensor_by_name("rpn_proposal_boxes:0"),
        {graph.get_tensor_by_name("encoded_images:0"): [image]}) for image in images]
    proposal_counts = [int((np.abs(p).sum(axis=-1) > 0).sum()) for p in proposals]
    cached = statistics.median(times["cached"])
    per_call = statistics.median(times["per_call"])
    result = {"config": cfg.NAME, "net": cfg.NET_NAME, "side": cfg.TARGET_SIDE,
              "classes": len(classes), "supports": cfg.NUM_SUPPORTS,
              "reference_side": cfg.REFERENCE_SIDE, "images": len(images),
              "weights": "trained" if FLAGS.checkpoint else "random",
              "cached_s_per_image": round(cached, 4),
              "per_call_s_per_image": round(per_call, 4),
              "ratio_cached_over_per_call": round(cached / per_call, 3),
              "export_with_prototypes_s": round(export_cached_s, 1),
              "proposals_per_image": proposal_counts,
              "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                                    / 2 ** 20, 2)}
    if FLAGS.json:
        print(json.dumps(result))
    else:
        print(f"{cfg.NAME} ({cfg.NET_NAME}, side {cfg.TARGET_SIDE}, {len(classes)} classes "
              f"x {cfg.NUM_SUPPORTS} supports at {cfg.REFERENCE_SIDE} px, "
              f"{result['weights']} weights), median over {len(images)} images:")
        print(f"  cached prototypes     {cached:.3f} s/image")
        print(f"  reference per call    {per_call:.3f} s/image")
        print(f"  ratio cached/per-call {cached / per_call:.3f}")
        print(f"  export (incl. prototypes) {export_cached_s:.1f} s, peak RSS "
              f"{result['peak_rss_gib']} GiB")


if __name__ == "__main__":
    flags.mark_flag_as_required("cfg")
    app.run(main)
