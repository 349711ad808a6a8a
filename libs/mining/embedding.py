"""A frozen feature space for crops: the backbone's pooled features, unit length.

    with CropEmbedder(cfg, checkpoint) as embed:
        features = embed(crops)          # uint8 [N, H, W, 3] RGB -> float32 [N, F]

The mining verifier (libs/mining/verify.py) compares a candidate's crop with reference,
base-class and background crops here. The weights are NET_NAME/* of `checkpoint`: the
ImageNet import (BACKBONE_CHECKPOINT, the default) has never been taught that an
unlabelled object is background, which a detector trained on the base data has; a
detector checkpoint works too (the same variable names). Each crop is resized to
`side` (aspect not kept, as references are), normalised as the detector's images, and
the C4 and C5 maps are average-pooled, each pooled vector scaled to unit length and the
two concatenated (again unit length): C4 keeps the finer texture a small defect is.
"""
import numpy as np

from libs.base.tf_compat import seeded_graph, tf
from libs.model import backbones, preprocessing
from libs.train.devices import session_config
from libs.train.model_fn import init_backbone_from_checkpoint

POOLED_LEVELS = ("C4", "C5")
BATCH = 32


class CropEmbedder:
    def __init__(self, cfg, checkpoint=None, side=None):
        checkpoint = checkpoint or cfg.BACKBONE_CHECKPOINT
        if not checkpoint:
            raise ValueError("the crop features need backbone weights: set "
                             "BACKBONE_CHECKPOINT or pass a checkpoint")
        self.side = int(side or cfg.REFERENCE_SIDE)
        self._graph = seeded_graph()
        with self._graph.as_default():
            self._crops = tf.placeholder(tf.uint8, [None, self.side, self.side, 3])
            images = preprocessing.normalize_pixels(self._crops, cfg.PIXEL_MEANS,
                                                    cfg.PIXEL_STD)
            levels = backbones.build_backbone(cfg.NET_NAME, images, is_training=False)
            pooled = [tf.math.l2_normalize(tf.reduce_mean(levels[name], axis=[1, 2]), axis=1)
                      for name in POOLED_LEVELS]
            self._features = tf.math.l2_normalize(tf.concat(pooled, axis=1), axis=1)
            init_backbone_from_checkpoint(cfg.replace(BACKBONE_CHECKPOINT=checkpoint))
            init = tf.global_variables_initializer()
        self._session = tf.Session(graph=self._graph, config=session_config())
        self._session.run(init)

    def __call__(self, crops):
        """uint8 crops (a list of [H, W, 3] of any size, or one array) -> [N, F]."""
        import cv2
        resized = np.stack([cv2.resize(np.asarray(c, np.uint8), (self.side, self.side),
                                       interpolation=cv2.INTER_LINEAR) for c in crops]) \
            if len(crops) else np.zeros([0, self.side, self.side, 3], np.uint8)
        out = [self._session.run(self._features, {self._crops: resized[i:i + BATCH]})
               for i in range(0, len(resized), BATCH)]
        width = int(self._features.shape[1])
        return np.concatenate(out) if out else np.zeros([0, width], np.float32)

    def close(self):
        self._session.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
