"""CLASSIFIER "comparison": the Comparison Detector's classifier, and its "learned" score.

Logits [M, K] from the squared differences between each ROI's features f and each of
the K prototypes p_k (row 0 the learned background). One set of weights scores every
class the same way: what is learned is how to compare, not what each class looks like
(that comes from the references). COMPARISON_SCORE chooses how, one ComparisonScore
each (registered in libs/model/classifiers/__init__.py):

  "learned" (LearnedScore, here; the notebook): logit_k = ReLU(BN(conv3d_[1,S,S]
      ((f - p_k)^2))) (COMPARISON_RELU = False drops the ReLU);
  "distance" (DistanceScore, distance.py): minus a weighted squared distance, so a
      nearer prototype always scores higher.

Variables: fast_rcnn/comparison_classifier/...
"""
import abc

from libs.base.tf_compat import slim, tf
from libs.model import classifiers
from libs.model.head_layers import head_batch_norm_params

SCOPE = "comparison_classifier"


class ComparisonClassifier(classifiers.Classifier):
    """Logits [M, K] from roi_features [M, S, S, F] and prototypes [K, S, S, F], scored
    by the COMPARISON_SCORE's ComparisonScore (box_features are not used)."""

    def __init__(self, cfg, bn_training):
        super().__init__(cfg, bn_training)
        self.score = classifiers.build_score(cfg, bn_training)

    def logits(self, roi_features, box_features, prototypes):
        del box_features
        num_prototypes = (tf.compat.dimension_value(prototypes.shape[0])
                          or tf.shape(prototypes)[0])
        return self.score.logits(roi_features, prototypes, num_prototypes)


class ComparisonScore(abc.ABC):
    """How the comparison classifier scores each ROI against each prototype; one
    subclass per COMPARISON_SCORE value. Its variables go under SCOPE (reused)."""

    def __init__(self, cfg, bn_training):
        self.cfg = cfg
        self.bn_training = bn_training

    @abc.abstractmethod
    def logits(self, roi_features, prototypes, num_prototypes):
        """Logits [M, K] ("class_logits") of roi_features [M, S, S, F] against
        prototypes [K, S, S, F]; num_prototypes: K, an int or a scalar tensor."""


class LearnedScore(ComparisonScore):
    """COMPARISON_SCORE "learned" (the notebook): a [1, S, S] conv3d sliding over the K
    axis of (f - p_k)^2, then batch norm (and ReLU with COMPARISON_RELU).

    That conv3d is a weighted sum of squared differences with weights of either sign,
    computed here as weighted_squared_distances (oneDNN's conv3d backward is slow; the
    variables are the conv3d's own). Nothing makes a nearer prototype score higher:
    trained on few classes, it can learn to score a class by how far its prototype
    is, and a new class's prototype then takes over (measured: docs/fewshot.md).
    """

    def logits(self, roi_features, prototypes, num_prototypes):
        cfg = self.cfg
        size, channels = cfg.ROI_SIZE, int(roi_features.shape[-1])
        depth = size * size * channels
        with tf.variable_scope(SCOPE, reuse=tf.AUTO_REUSE):
            with tf.variable_scope("compare_conv3d"):
                weights = slim.model_variable(
                    "weights", shape=[1, size, size, channels, 1],
                    initializer=slim.initializers.xavier_initializer())
                scores = weighted_squared_distances(roi_features, prototypes,
                                                    tf.reshape(weights, [depth, 1]))
                # Batch norm over every (ROI, class) score, as on the conv3d's 5-D output.
                scores = slim.batch_norm(
                    tf.reshape(scores, [-1, num_prototypes, 1, 1, 1]),
                    **dict(head_batch_norm_params(cfg, self.bn_training), fused=False))
                if cfg.COMPARISON_RELU:
                    scores = tf.nn.relu(scores)
            return tf.reshape(scores, [-1, num_prototypes], name="class_logits")


def weighted_squared_distances(roi_features, prototypes, weights):
    """sum_d w_d (f_d - p_kd)^2 for every ROI f and prototype p_k: [M, K].

    roi_features [M, S, S, F], prototypes [K, S, S, F], weights [S*S*F, 1]. Expanded as

        f^2 . w - 2 f . (w * p_k) + p_k^2 . w

    and computed as matrix products instead of a [M, K, S, S, F] tensor of differences:
    the same value (and gradients) with far less memory and time. Both sides are
    centred on the prototypes' mean first, which leaves every difference unchanged and
    keeps f^2 and p^2 small so the sum does not cancel.
    """
    depth = int(weights.shape[0])
    queries = tf.reshape(roi_features, [-1, depth])
    protos = tf.reshape(prototypes, [-1, depth])
    centre = tf.reduce_mean(protos, axis=0, keepdims=True)
    queries, protos = queries - centre, protos - centre
    query_term = tf.matmul(tf.square(queries), weights)                          # [M, 1]
    cross_term = tf.matmul(queries, protos * tf.transpose(weights), transpose_b=True)
    proto_term = tf.transpose(tf.matmul(tf.square(protos), weights))             # [1, K]
    return tf.add(query_term - 2.0 * cross_term, proto_term,
                  name="weighted_squared_distance")
