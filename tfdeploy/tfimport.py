"""Import TensorFlow without its start-up chatter.

TF's C++ runtime prints oneDNN/CUDA notices straight to file descriptor 2 while it loads,
before ``TF_CPP_MIN_LOG_LEVEL`` takes effect.  Users of a CLI should see our output, not
that, so commands that compute with TF import it through here first.
"""

from __future__ import annotations

import os
import sys
import types


def quiet_import_tensorflow() -> types.ModuleType:
    if "tensorflow" in sys.modules and hasattr(sys.modules["tensorflow"], "function"):
        return sys.modules["tensorflow"]
    # Level 3 also hides the "failed call to cuInit" error every GPU-less machine logs.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            import tensorflow as tf
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    return tf


def onednn_enabled() -> bool:
    """Whether this process's TensorFlow runs its oneDNN kernels (decided once, from
    ``TF_ENABLE_ONEDNN_OPTS`` and the CPU: see tfs/onednn.py).  Imports TensorFlow."""
    quiet_import_tensorflow()
    try:
        from tensorflow.python.util import _pywrap_util_port
    except ImportError:  # a TensorFlow without the query: assume its default, on
        return True
    return bool(_pywrap_util_port.IsMklEnabled())
