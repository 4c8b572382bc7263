"""Runtimes for ``tfdeploy serve``: docker (the official tensorflow/serving image), native
(tensorflow_model_server on PATH) and embedded (tfdeploy-model-server), behind one small
interface (start, wait until ready, status, logs, stop)."""
