"""SavedModel export and the serving graph (DESIGN.md section 7: export, predict).

    info = export_saved_model(run, checkpoint, export_dir)   # tools/export_savedmodel.py
    detector = Detector.from_saved_model(export_dir)          # tools/predict.py
    detector = Detector.from_checkpoint(run, checkpoint)      # same graph, no export
    results = detector.detect([jpeg_bytes, png_bytes, ...])

The serving graph takes a batch of encoded images (JPEG/PNG/GIF/BMP bytes, any size,
string [N]) under the input key "images"; preprocessing (decode, resize, pad) is the
training one, inside the graph. Its outputs (signature "serving_default"):

    num_detections      int32   [N]
    predict_bbox        float32 [N, MAX, 4]  [y1, x1, y2, x2] in ORIGINAL image pixels
    predict_class_id    int32   [N, MAX]     1..NUM_CLASS-1 (0 on padding rows)
    predict_class_name  string  [N, MAX]     ("" on padding rows)
    predict_scores      float32 [N, MAX]
    image_id            int64   [N]          position in the batch

Rows past num_detections are padding. Detections have score >= DETECTION_MIN_CONFIDENCE.

Prototypes: by default the reference branch runs ONCE, at export, on the checkpoint's
weights, and the resulting [NUM_CLASS, S, S, F] prototypes are stored in the model as
a constant: serving needs no reference images and never reruns the branch. Exporting
the same checkpoint with another reference folder (same classes) is the few-shot
promise: new references, no retraining. `cache_prototypes=False` keeps the notebook's
behaviour (reference images stored, branch rerun at every call), for benchmarks.
"""
import json
import os

import numpy as np

from libs.base.errors import UserError
from libs.base.io_utils import DirectoryExistsError, atomic_directory
from libs.base.tf_compat import seeded_graph, tf
from libs.model import classifiers, preprocessing, reference
from libs.train import runs
from libs.train.devices import session_config
from libs.train.model_fn import PREDICT, make_pyramid_fn, model_fn

INPUT_KEY = "images"
SIGNATURE = "serving_default"
SERVING_TAGS = ("serve",)
INFO_FILE = "export_info.json"      # in <export_dir>/assets.extra/
OUTPUT_KEYS = ("num_detections", "predict_bbox", "predict_class_id", "predict_class_name",
               "predict_scores", "image_id")


class ExportError(UserError):
    """An export or a served model that cannot be used; one line for the user."""


def _session(graph):
    return tf.Session(graph=graph, config=session_config())


def _restore(session, checkpoint):
    try:
        tf.train.Saver().restore(session, checkpoint)
    except (tf.errors.NotFoundError, tf.errors.InvalidArgumentError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise ExportError(f"checkpoint {checkpoint} does not match this config's model "
                          f"({first[:200]})") from exc


def compute_prototypes(cfg, checkpoint, reference_images, counts=None):
    """Runs the reference branch on `checkpoint`: float32 [NUM_CLASS, S, S, F].

    Row 0 is the learned background prototype. The branch is the one model_fn builds
    (batch-norm moving statistics, shared backbone and FPN weights).
    """
    graph = seeded_graph(cfg.SEED)   # initializers are built, then overwritten by restore
    with graph.as_default():
        images = tf.constant(np.asarray(reference_images, np.uint8))
        built = reference.build_prototypes(
            images, make_pyramid_fn(cfg, PREDICT, reference_branch=True), cfg,
            counts=counts)
        with _session(graph) as session:
            _restore(session, checkpoint)
            return session.run(built)


def serving_params(run, checkpoint, cache_prototypes=True):
    """The run's model_params for the serving graph: the prototypes computed once from
    the references (no reference branch in the graph) unless told otherwise."""
    cfg = run.cfg
    if classifiers.uses_prototypes(cfg.CLASSIFIER) and cache_prototypes:
        prototypes = compute_prototypes(cfg, checkpoint, run.reference_images,
                                        run.reference_counts)
        return runs.model_params(run, prototypes=prototypes, reference_images=None,
                                 reference_counts=None)
    return runs.model_params(run)


def build_serving_graph(params):
    """Builds the serving graph in the default graph: (inputs dict, outputs dict)."""
    cfg = params["net_config"]
    encoded = tf.placeholder(tf.string, [None], name="encoded_images")
    features = preprocessing.serving_features(encoded, cfg)
    spec = model_fn(features, None, PREDICT, params)
    outputs = {key: spec.predictions[key] for key in OUTPUT_KEYS}
    return {INPUT_KEY: encoded}, outputs


def _global_step(checkpoint):
    try:
        return int(tf.train.load_variable(checkpoint, "global_step"))
    except Exception:  # a checkpoint without a step still exports
        return None


def export_saved_model(run, checkpoint, export_dir, overwrite=False,
                       cache_prototypes=True):
    """Writes the SavedModel of `checkpoint` to `export_dir` (atomically); returns its info.

    The info (also written to <export_dir>/assets.extra/export_info.json) records the
    checkpoint, step, classes, the reference images used and the thresholds.
    """
    cfg = run.cfg
    params = serving_params(run, checkpoint, cache_prototypes)
    info = {
        "config": cfg.NAME,
        "checkpoint": os.path.abspath(checkpoint),
        "global_step": _global_step(checkpoint),
        "class_names": list(run.class_names),
        "classifier": cfg.CLASSIFIER,
        "prototypes": (f"none ({cfg.CLASSIFIER} classifier)"
                       if not classifiers.uses_prototypes(cfg.CLASSIFIER) else
                       "cached at export" if cache_prototypes else
                       "reference branch rerun at every call"),
        "reference_dir": (os.path.abspath(run.reference_dir)
                          if classifiers.uses_prototypes(cfg.CLASSIFIER) and run.reference_dir
                          else None),
        "reference_files": run.reference_paths,
        "target_side": cfg.TARGET_SIDE,
        "min_score": cfg.DETECTION_MIN_CONFIDENCE,
        "max_detections": cfg.DETECTION_MAX_INSTANCES,
        "test_flips": list(cfg.TEST_FLIPS),
        "signature": SIGNATURE,
        "input": INPUT_KEY,
        "outputs": list(OUTPUT_KEYS),
    }
    graph = seeded_graph(cfg.SEED)
    try:
        with atomic_directory(export_dir, overwrite=overwrite) as temp_dir:
            model_dir = os.path.join(temp_dir, "model")
            with graph.as_default():
                inputs, outputs = build_serving_graph(params)
                signature = tf.saved_model.signature_def_utils.predict_signature_def(
                    inputs, outputs)
                with _session(graph) as session:
                    _restore(session, checkpoint)
                    builder = tf.saved_model.Builder(model_dir)
                    builder.add_meta_graph_and_variables(
                        session, list(SERVING_TAGS), signature_def_map={SIGNATURE: signature},
                        strip_default_attrs=True)
                    builder.save()
            os.makedirs(os.path.join(model_dir, "assets.extra"))
            with open(os.path.join(model_dir, "assets.extra", INFO_FILE), "w") as handle:
                json.dump(info, handle, indent=2)
                handle.write("\n")
            # The folder becomes export_dir itself (saved_model.pb at its top).
            for name in os.listdir(model_dir):
                os.replace(os.path.join(model_dir, name), os.path.join(temp_dir, name))
            os.rmdir(model_dir)
    except DirectoryExistsError as exc:
        raise ExportError(f"--export_dir {export_dir} already exists (pass --overwrite to "
                          f"replace it)") from exc
    return info


def read_export_info(export_dir):
    """The export_info.json of an exported model, or {} when it has none."""
    path = os.path.join(export_dir, "assets.extra", INFO_FILE)
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


class Detector:
    """Runs the serving graph in a session: from a SavedModel, or from a checkpoint.

    detect(list of encoded images) -> one dict per image:
        {"boxes": float32 [n, 4] original pixels [y1, x1, y2, x2], "class_ids": [n],
         "class_names": [n] str, "scores": [n]}
    Bytes that are not an image raise ExportError naming the image's position.
    """

    def __init__(self, session, input_tensor, output_tensors, info=None):
        self.session = session
        self.input_tensor = input_tensor
        self.output_tensors = output_tensors
        self.info = info or {}

    @classmethod
    def from_saved_model(cls, export_dir):
        if not tf.saved_model.contains_saved_model(export_dir):
            raise ExportError(f"{export_dir} is not a SavedModel folder (no saved_model.pb)")
        graph = tf.Graph()
        session = _session(graph)
        with graph.as_default():
            meta_graph = tf.saved_model.loader.load(session, list(SERVING_TAGS), export_dir)
        if SIGNATURE not in meta_graph.signature_def:
            raise ExportError(f"{export_dir} has no '{SIGNATURE}' signature")
        signature = meta_graph.signature_def[SIGNATURE]
        missing = [key for key in OUTPUT_KEYS if key not in signature.outputs]
        if INPUT_KEY not in signature.inputs or missing:
            raise ExportError(f"{export_dir} was not exported by this project (its "
                              f"signature lacks {[INPUT_KEY] + missing})")
        input_tensor = graph.get_tensor_by_name(signature.inputs[INPUT_KEY].name)
        outputs = {key: graph.get_tensor_by_name(signature.outputs[key].name)
                   for key in OUTPUT_KEYS}
        return cls(session, input_tensor, outputs, read_export_info(export_dir))

    @classmethod
    def from_checkpoint(cls, run, checkpoint, cache_prototypes=True):
        params = serving_params(run, checkpoint, cache_prototypes)
        graph = seeded_graph(run.cfg.SEED)
        with graph.as_default():
            inputs, outputs = build_serving_graph(params)
            session = _session(graph)
            _restore(session, checkpoint)
        info = {"checkpoint": checkpoint, "class_names": list(run.class_names),
                "min_score": run.cfg.DETECTION_MIN_CONFIDENCE}
        return cls(session, inputs[INPUT_KEY], outputs, info)

    def run(self, encoded_images):
        """The raw signature outputs (padded arrays) for a list of encoded images."""
        batch = np.array(list(encoded_images), dtype=object)
        if batch.shape != (len(batch),) or not len(batch):
            raise ExportError(f"expected a non-empty list of encoded images, got "
                              f"{len(batch)} item(s) of shape {batch.shape}")
        try:
            return self.session.run(self.output_tensors, {self.input_tensor: batch})
        except tf.errors.InvalidArgumentError as exc:
            raise ExportError(_decode_error_line(exc)) from exc

    def detect(self, encoded_images):
        raw = self.run(encoded_images)
        results = []
        for i, count in enumerate(raw["num_detections"]):
            names = raw["predict_class_name"][i, :count]
            results.append({
                "boxes": raw["predict_bbox"][i, :count],
                "class_ids": raw["predict_class_id"][i, :count],
                "class_names": [n.decode("utf-8") for n in names],
                "scores": raw["predict_scores"][i, :count],
            })
        return results

    def close(self):
        self.session.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
        return False


def _decode_error_line(exc):
    """One line for a failed call: our assertion, else the decoder's own reason."""
    message = getattr(exc, "message", str(exc))
    for line in message.splitlines():
        if "of the batch is not" in line:
            # "assertion failed: [image] [1] [of the batch is not ...]"
            parts = [p.strip(" []") for p in line.split("] [")]
            position = next((p for p in parts if p.isdigit()), "?")
            return f"image {position} of the batch is not a JPEG, PNG, GIF or BMP file"
    noise = ("Graph execution error", "Detected at node", "Node:", "[[", "(most recent")
    reasons = [line.strip() for line in message.splitlines()
               if line.strip() and not line.strip().startswith(noise)]
    reason = reasons[0] if reasons else type(exc).__name__
    return f"an image of the batch is corrupt or truncated ({reason[:200]})"
