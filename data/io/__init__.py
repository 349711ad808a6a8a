"""Dataset I/O: annotation conversion (convert), record schema (tfrecord_format), label
maps (label_map), reference images (reference_set), and the Estimator input pipeline
(input_fn, preprocessing, rpn_targets).

Modules are imported explicitly (``from data.io import convert``); nothing is imported
here, so that light tools do not pay for TensorFlow's import.
"""
