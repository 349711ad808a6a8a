"""CLASSIFIER "fc": the FPN baseline, a linear (FC) classifier on the box branch's
features, one output per class and no prototypes (its outputs are the trained
classes: a new class needs retraining). Variables: fast_rcnn/fc_classifier/..."""
from libs.base.tf_compat import slim, tf
from libs.model import classifiers


class FCClassifier(classifiers.Classifier):
    """Logits [M, NUM_CLASS] from box_features [M, HEAD_CHANNELS]."""

    def logits(self, roi_features, box_features, prototypes):
        del roi_features, prototypes
        with tf.variable_scope("fc_classifier", reuse=tf.AUTO_REUSE):
            return slim.fully_connected(box_features, self.cfg.NUM_CLASS,
                                        activation_fn=None,
                                        weights_initializer=tf.random_normal_initializer(
                                            stddev=0.01),
                                        scope="class_logits")
