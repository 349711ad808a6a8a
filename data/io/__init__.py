"""Dataset I/O: annotation conversion (convert: the annotation formats in formats/, the
rules in annotation and cleaning, image loading in images), record schema
(tfrecord_format), label maps (label_map), reference images (reference_set), few-shot
splits (fewshot), and the Estimator input pipeline (input_fn, preprocessing,
rpn_targets).

Modules are imported explicitly (``from data.io import convert``); nothing is imported
here, so that light tools do not pay for TensorFlow's import.
"""
