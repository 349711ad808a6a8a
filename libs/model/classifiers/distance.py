"""COMPARISON_SCORE "distance": the comparison classifier scored by a distance.

    logit_k = -scale * mean_d w_d (f_d - p_kd)^2 (+ a learned bias on the background's)

with w_d = softplus(v_d) >= 0 and a learned scale > 0: a nearer prototype always
scores higher, for classes the model never saw too (prototypical networks' rule, with
learned per-feature weights). Variables: fast_rcnn/comparison_classifier/distance/...
"""
from libs.base.tf_compat import slim, tf
from libs.model.classifiers.comparison import (
    SCOPE,
    ComparisonScore,
    weighted_squared_distances,
)


class DistanceScore(ComparisonScore):
    """Logits -exp(log_scale) * weighted mean squared distance, background_bias added
    to column 0."""

    def logits(self, roi_features, prototypes, num_prototypes):
        depth = self.cfg.ROI_SIZE * self.cfg.ROI_SIZE * int(roi_features.shape[-1])
        weights = distance_weights(depth)
        with tf.variable_scope(SCOPE, reuse=tf.AUTO_REUSE):
            with tf.variable_scope("distance"):
                log_scale = slim.model_variable("log_scale", shape=[],
                                                initializer=tf.zeros_initializer())
                background_bias = slim.model_variable("background_bias", shape=[],
                                                      initializer=tf.zeros_initializer())
                distances = weighted_squared_distances(roi_features, prototypes,
                                                       weights) / depth
                logits = -tf.exp(log_scale) * distances
                bias = tf.one_hot(0, num_prototypes) * background_bias
                return tf.add(logits, bias, name="class_logits")


def distance_weights(depth):
    """The per-feature weights w_d = softplus(v_d) >= 0, [depth, 1], in the head's
    scope (comparison_classifier/distance)."""
    with tf.variable_scope(f"{SCOPE}/distance", reuse=tf.AUTO_REUSE):
        # softplus(0.5413) = 1: every feature starts with weight 1
        raw = slim.model_variable("feature_weights", shape=[depth, 1],
                                  initializer=tf.constant_initializer(0.5413))
    return tf.nn.softplus(raw)
