"""An independent TF1/slim DeepLab-v3 graph, built the way the seed repository builds it,
used to write seed-format checkpoints and reference outputs for parity tests.

It shares no code with ``tfdeploy.export``: the bottleneck and ``conv2d_same`` are
tf-slim's own; only the multi-grid stacking (which slim does not have) is written here,
following the seed's ``stack_blocks_dense``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow.python.framework import ops

ops.Tensor = tf.Tensor  # tf-slim 1.1 still refers to ops.Tensor, gone in TF 2.21
import tf_slim as slim  # noqa: E402
from tf_slim.nets import resnet_utils, resnet_v2  # noqa: E402

tf1 = tf.compat.v1

UNITS = {"resnet_v2_50": (3, 4, 6, 3), "resnet_v2_101": (3, 4, 23, 3)}


def _stack_blocks(net, resnet_model: str, output_stride: int, multi_grid=(1, 2, 4)):
    target = output_stride // 4
    current_stride, rate = 1, 1
    for b, count in enumerate(UNITS[resnet_model], start=1):
        base = 64 * 2 ** (b - 1)
        with tf1.variable_scope(f"block{b}"):
            for i in range(count):
                stride = 2 if (b < 4 and i == count - 1) else 1
                with tf1.variable_scope(f"unit_{i + 1}"):
                    if current_stride == target:
                        r = rate * (multi_grid[i] if b == 4 else 1)
                        net = resnet_v2.bottleneck(net, base * 4, base, 1, rate=r)
                        rate *= stride
                    else:
                        net = resnet_v2.bottleneck(net, base * 4, base, stride, rate=1)
                        current_stride *= stride
    return net


def build_graph(images, resnet_model: str, num_classes: int, output_stride: int, eps=1e-5):
    """Inference graph of the seed's network; returns logits at input resolution."""
    bn = dict(decay=0.9997, epsilon=eps, scale=True, fused=True,
              updates_collections=None, is_training=False)
    net = images - [123.68, 116.78, 103.94]
    with slim.arg_scope([slim.conv2d], activation_fn=tf.nn.relu,
                        normalizer_fn=slim.batch_norm, normalizer_params=bn), \
            slim.arg_scope([slim.batch_norm], **bn), \
            slim.arg_scope([slim.max_pool2d], padding="SAME"):
        with tf1.variable_scope(resnet_model):
            with slim.arg_scope([slim.conv2d], activation_fn=None, normalizer_fn=None):
                net = resnet_utils.conv2d_same(net, 64, 7, stride=2, scope="conv1")
            net = slim.max_pool2d(net, [3, 3], stride=2, scope="pool1")
            block4 = _stack_blocks(net, resnet_model, output_stride)
            # slim's classifier head: in the checkpoint, unused by DeepLab.
            post = slim.batch_norm(block4, activation_fn=tf.nn.relu, scope="postnorm")
            slim.conv2d(post, num_classes, [1, 1], activation_fn=None, normalizer_fn=None,
                        scope="logits")
        with tf1.variable_scope("DeepLab_v3"):
            with tf1.variable_scope("ASPP_layer"):
                size = tf.shape(block4)
                img = tf.reduce_mean(block4, [1, 2], keepdims=True)
                img = slim.conv2d(img, 256, [1, 1], scope="image_level_conv_1x1",
                                  activation_fn=None)
                img = tf1.image.resize_bilinear(img, (size[1], size[2]))
                b0 = slim.conv2d(block4, 256, [1, 1], scope="conv_1x1_0", activation_fn=None)
                b1 = slim.conv2d(block4, 256, [3, 3], scope="conv_3x3_1", rate=6,
                                 activation_fn=None)
                b2 = slim.conv2d(block4, 256, [3, 3], scope="conv_3x3_2", rate=12,
                                 activation_fn=None)
                b3 = slim.conv2d(block4, 256, [3, 3], scope="conv_3x3_3", rate=18,
                                 activation_fn=None)
                net = tf.concat((img, b0, b1, b2, b3), axis=3)
                net = slim.conv2d(net, 256, [1, 1], scope="conv_1x1_output", activation_fn=None)
            net = slim.conv2d(net, num_classes, [1, 1], activation_fn=None, normalizer_fn=None,
                              scope="logits")
            return tf1.image.resize_bilinear(net, tf.shape(images)[1:3])


def _randomize(sess, rng: np.random.Generator) -> None:
    for v in tf1.global_variables():
        shape = v.shape.as_list()
        leaf = v.op.name.rsplit("/", 1)[1]
        if leaf == "weights":
            fan_in = int(np.prod(shape[:-1]))
            val = rng.normal(0, np.sqrt(1.0 / fan_in), shape)
        elif leaf == "gamma":
            val = rng.uniform(0.4, 1.0, shape)  # keeps activations O(1), like a trained net
        elif leaf == "moving_variance":
            val = rng.uniform(0.5, 2.0, shape)
        elif leaf in ("beta", "moving_mean", "biases"):
            val = rng.normal(0, 0.1, shape)
        else:
            continue
        v.load(val.astype(np.float32), sess)


def make_seed_checkpoint(directory: Path, probe: np.ndarray, resnet_model="resnet_v2_50",
                         num_classes=21, output_stride=16, seed=0) -> np.ndarray:
    """Write ``model.ckpt*``, ``checkpoint`` and ``data.json`` like a seed training run
    (optimizer state included) and return the graph's logits for ``probe``."""
    directory.mkdir(parents=True, exist_ok=True)
    graph = tf.Graph()
    with graph.as_default():
        images = tf1.placeholder(tf.float32, [None, None, None, 3])
        logits = build_graph(images, resnet_model, num_classes, output_stride)
        served = list(tf1.global_variables())
        with tf1.variable_scope("optimizer_vars"):
            tf1.get_variable("Variable", [], tf.int64, tf1.zeros_initializer())
            tf1.get_variable("beta1_power", [], tf.float32, tf1.ones_initializer())
            tf1.get_variable("beta2_power", [], tf.float32, tf1.ones_initializer())
        for v in served[-4:]:  # a few Adam slots are enough to prove they are skipped
            for slot in ("Adam", "Adam_1"):
                tf1.get_variable(f"{v.op.name}/{slot}", v.shape, tf.float32,
                                 tf1.zeros_initializer())
        saver = tf1.train.Saver()
        with tf1.Session(graph=graph) as sess:
            sess.run(tf1.global_variables_initializer())
            _randomize(sess, np.random.default_rng(seed))
            out = sess.run(logits, {images: probe})
            saver.save(sess, str(directory / "model.ckpt"))
    (directory / "data.json").write_text(json.dumps({
        "resnet_model": resnet_model, "number_of_classes": num_classes,
        "output_stride": output_stride, "batch_norm_epsilon": 1e-5,
        "batch_norm_decay": 0.9997, "l2_regularizer": 1e-4, "batch_size": 8,
        "starting_learning_rate": 1e-5, "gpu_id": 0, "current_best_val_loss": "inf",
    }))
    return out


SEED_TOY_SCALE = np.array([1.0, 2.0, 0.5], np.float32)


def write_seed_savedmodel(version_dir: Path) -> None:
    """A version directory the way the seed's TF1 script wrote it: SavedModelBuilder,
    text ``saved_model.pbtxt``, ``images`` bound to an Identity fed through, ``height`` and
    ``width`` placeholders of unknown shape, a variable.  The "network" is a toy:
    mask = argmax over channels of image * SEED_TOY_SCALE."""
    graph = tf.Graph()
    with graph.as_default(), tf1.Session(graph=graph) as sess:
        images = tf1.placeholder(tf.float32, [1, None, None, 3])
        height, width = tf1.placeholder(tf.int32), tf1.placeholder(tf.int32)
        fed = tf.identity(images)
        scale = tf1.get_variable("scale", initializer=SEED_TOY_SCALE)
        hw = tf.reshape(tf.stack([height, width]), [-1])
        reshaped = tf.reshape(fed, tf.concat([[1], hw, [3]], 0))
        seg = tf.argmax(reshaped * scale, axis=3)
        seg.set_shape([1, None, None])
        sess.run(tf1.global_variables_initializer())
        builder = tf1.saved_model.builder.SavedModelBuilder(str(version_dir))
        info = tf1.saved_model.utils.build_tensor_info
        sig = tf1.saved_model.signature_def_utils.build_signature_def(
            inputs={"images": info(fed), "height": info(height), "width": info(width)},
            outputs={"segmentation_map": info(seg)},
            method_name=tf1.saved_model.signature_constants.PREDICT_METHOD_NAME)
        builder.add_meta_graph_and_variables(
            sess, [tf1.saved_model.tag_constants.SERVING],
            signature_def_map={"predict_images": sig})
        builder.save(as_text=True)
