"""Losses of the detector, each defined so an empty minibatch counts 0, never NaN."""
from libs.base.tf_compat import tf


def smooth_l1(predictions, targets):
    """Elementwise smooth-L1 (Huber with threshold 1): 0.5 d^2 if |d| < 1 else |d| - 0.5."""
    diff = tf.abs(predictions - targets)
    return tf.where(diff < 1.0, 0.5 * tf.square(diff), diff - 0.5)


def safe_mean(values):
    """Mean of `values`, 0 when there are none (an empty minibatch is not an error)."""
    count = tf.cast(tf.size(values), tf.float32)
    return tf.reduce_sum(values) / tf.maximum(count, 1.0)


def sparse_softmax_cross_entropy(labels, logits):
    """Mean sparse softmax CE over rows; 0 for no rows."""
    losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    return safe_mean(losses)


def l2_regularisation(variables, weight_decay):
    """sum(l2_loss(w) * weight_decay / size(w)) over `variables`, batch norm excluded.

    The notebook's form: each tensor's penalty is normalised by its size, so large conv
    kernels are not penalised more than small ones. Batch-norm gamma/beta are excluded.
    """
    terms = []
    for var in variables:
        name = var.op.name
        if "BatchNorm" in name or name.endswith(("/gamma", "/beta")):
            continue
        size = float(var.shape.num_elements())
        terms.append(tf.nn.l2_loss(var) * (weight_decay / size))
    if not terms:
        return tf.constant(0.0)
    return tf.add_n(terms, name="l2_sum")
