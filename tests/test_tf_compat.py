"""libs.base.tf_compat: graph mode, and slim batch norm works on TF 2.15 (DESIGN.md section 2)."""
import importlib

import numpy as np

from libs.base.tf_compat import seeded_graph, slim, tf


def test_graph_mode_not_eager():
    assert not tf.executing_eagerly()


def test_legacy_keras_layers_importable_after_tf_compat():
    # The module slim's batch norm reaches through tensorflow.python.layers; on
    # tf-keras 2.15 it only exists as tf_keras.src.legacy_tf_layers without the alias.
    normalization = importlib.import_module("tf_keras.legacy_tf_layers.normalization")
    assert hasattr(normalization, "BatchNormalization")


def test_slim_batch_norm_builds_and_runs():
    graph = seeded_graph()
    with graph.as_default():
        inputs = tf.placeholder(tf.float32, [4, 3, 3, 2])
        outputs = slim.batch_norm(inputs, is_training=True, scale=True, decay=0.5,
                                  scope="bn")
        update_ops = tf.get_collection(tf.GraphKeys.UPDATE_OPS)
        assert update_ops, "training-mode batch norm must register its moving-average updates"
        moving_mean = [v for v in tf.global_variables() if v.op.name == "bn/moving_mean"][0]
        values = np.random.RandomState(0).normal(3.0, 2.0, size=[4, 3, 3, 2])
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            normalized, _ = sess.run([outputs, update_ops], {inputs: values})
            updated_mean = sess.run(moving_mean)
    # Batch statistics: each channel comes out with zero mean and unit variance.
    np.testing.assert_allclose(normalized.mean(axis=(0, 1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(normalized.std(axis=(0, 1, 2)), 1.0, atol=1e-2)
    # decay 0.5 from an initial 0: the moving mean moves halfway to the batch mean.
    np.testing.assert_allclose(updated_mean, 0.5 * values.mean(axis=(0, 1, 2)), rtol=1e-5)
