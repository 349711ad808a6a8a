"""Layers of the second stage shared by the box branch (build_fast_rcnn.py) and the
classifiers (libs/model/classifiers/)."""
from libs.base.tf_compat import slim, tf


def head_batch_norm_params(cfg, is_training):
    """Batch norm of the second stage, as in the notebook: scaled, epsilon 1e-5."""
    return {"is_training": is_training, "decay": cfg.HEAD_BATCH_NORM_DECAY,
            "epsilon": 1e-5, "scale": True}


def window_conv(inputs, num_outputs, normalizer_params, scope):
    """slim.conv2d(inputs, num_outputs, [S, S], padding="VALID") + batch norm + ReLU on
    S x S inputs, computed as one matrix product.

    A VALID convolution whose kernel covers the whole input is a dot product per output
    channel: [M, S*S*C] x [S*S*C, num_outputs]. oneDNN runs it as a convolution whose
    backward pass is pathologically slow on CPUs without AVX-512 (the 7x7 box-branch
    conv's gradients were 22 of the 50 op-seconds of a ResNet-101 step at side 512).
    The variables are the convolution's own (same names, shapes and initialiser), so
    checkpoints of either form load into the other. Returns [M, 1, 1, num_outputs].
    """
    size, channels = int(inputs.shape[1]), int(inputs.shape[-1])
    with tf.variable_scope(scope):
        weights = slim.model_variable(
            "weights", shape=[size, size, channels, num_outputs],
            initializer=slim.initializers.xavier_initializer())
        flat = tf.reshape(inputs, [-1, size * size * channels])
        net = tf.matmul(flat, tf.reshape(weights, [size * size * channels, num_outputs]))
        net = tf.reshape(net, [-1, 1, 1, num_outputs])
        net = slim.batch_norm(net, **normalizer_params)
        return tf.nn.relu(net)
