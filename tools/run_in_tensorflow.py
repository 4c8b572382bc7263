"""Run an export's ``predict_images`` signature in whichever TensorFlow runs this script.

    OTHER_TF_PYTHON tools/run_in_tensorflow.py SAVEDMODEL IN.npz OUT.npz

For checking that an export computes the same in another TensorFlow build than the one
that wrote it (e.g. TF 2.12, whose oneDNN is v2.7, against TF 2.21's v3.7: the int8
kernels scale their int32 output differently between the two).  Imports nothing of
tfdeploy, so any Python with TensorFlow and numpy runs it.  ``IN.npz`` holds RGB images
as float32 [H, W, 3] arrays; ``OUT.npz`` gets each one's ``segmentation_map`` under the
same name, plus ``tf_version`` and ``onednn`` (oneDNN's version line, when TensorFlow
uses it)."""

from __future__ import annotations

import os
import subprocess
import sys


def onednn_version() -> str:
    """oneDNN's version as this TensorFlow's kernels report it (a child process with
    ONEDNN_VERBOSE=1 runs one convolution), or "" when oneDNN is off or silent."""
    probe = ("import tensorflow as tf; tf.nn.conv2d(tf.ones([1, 8, 8, 8]), "
             "tf.ones([3, 3, 8, 8]), 1, 'SAME')")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         env={**os.environ, "ONEDNN_VERBOSE": "1"}, timeout=300).stdout
    for line in out.splitlines():
        if "oneDNN v" in line:
            return line.split("oneDNN ", 1)[1].split(" ")[0]
    return ""


def main() -> None:
    # int8 exports run on oneDNN's kernels, which TensorFlow leaves off by default on CPUs
    # without VNNI, AVX512_BF16 or AMX (tfdeploy/tfs/onednn.py); the probe child inherits it
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    import numpy as np
    import tensorflow as tf

    path, inputs, output = sys.argv[1:4]
    predict = tf.saved_model.load(path).signatures["predict_images"]
    maps = {}
    with np.load(inputs) as images:
        for name in images.files:
            image = images[name].astype(np.float32)
            h, w = image.shape[:2]
            maps[name] = predict(images=tf.constant(image[None]), height=tf.constant([h]),
                                 width=tf.constant([w]))["segmentation_map"].numpy()[0]
    np.savez(output, tf_version=np.array(tf.__version__), onednn=np.array(onednn_version()),
             **maps)


if __name__ == "__main__":
    main()
