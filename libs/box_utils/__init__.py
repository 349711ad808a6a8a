"""Box utilities shared by the RPN, Fast R-CNN head and input pipeline.

Boxes are float32 ``[y1, x1, y2, x2]`` in pixels of the padded network input; height is
``y2 - y1`` and width ``x2 - x1`` (no +1). An all-zero row is padding.

- ``anchors``: numpy anchor generation (anchors are graph constants).
- ``box_ops``: TF graph ops (IoU, encode/decode, clip, trim, padded NMS, batch_slice).

Import the submodules directly (``from libs.box_utils import box_ops``); nothing is
imported here so that the numpy-only ``anchors`` does not pull in TensorFlow.
"""
