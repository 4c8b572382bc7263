"""Loader: loads one version on the platform it is for, then replays its warmup.

The platform is the SavedModel's (``servable.SavedModelLoader``) unless
``--prefer_tflite_model`` is on and the version has ``model.tflite``
(``tflite.TfliteLoader``), as tensorflow_model_server chooses.  Warmup replays
``assets.extra/tf_serving_warmup_requests`` (at most 1000 records, as TF Serving) so
tracing and allocation happen before traffic.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import tensorflow as tf

from tfdeploy.serving.servable import PlatformLoader, SavedModelLoader, Servable
from tfdeploy.serving.tflite import TfliteLoader
from tfdeploy.tfs import tensors
from tfdeploy.tfs.names import SERVE_TAG
from tfdeploy.tfs.versions import TFLITE_FILE, WARMUP_FILE

log = logging.getLogger("tfdeploy.serving")

MAX_WARMUP_RECORDS = 1000


class Loader:
    """Knows how to load one version; loading is only done when the Manager says so (on
    a loader thread)."""

    def __init__(self, name: str, version: int, path: Path, warmup: bool = True,
                 batching=None, metrics=None, tags: tuple[str, ...] = (SERVE_TAG,),
                 prefer_tflite: bool = False, threads: tuple[int, int] = (0, 0)):
        self.name, self.version, self.path = name, version, path
        self.warmup = warmup
        self.batching = batching
        self.metrics = metrics
        self.tags = tuple(tags)
        self.prefer_tflite = prefer_tflite
        self.threads = threads
        #: set by the Manager when this load is no longer wanted (--load_timeout_seconds):
        #: warmup stops at the next record, the only point TensorFlow lets us stop at
        self.abandon = threading.Event()

    def load(self) -> Servable:
        """The platform's loader, then batching and warmup: the version as it will serve."""
        platform = self.platform_loader()
        servable = platform.load()
        if isinstance(platform, SavedModelLoader) and self.batching is not None:
            from tfdeploy.serving.batching import make_batchers

            servable.batchers = make_batchers(servable, self.batching, self.metrics)
        if self.warmup:
            self._replay_warmup(servable)
        return servable

    def platform_loader(self) -> PlatformLoader:
        """The loader of the platform this version is served on: its ``model.tflite``
        alone with --prefer_tflite_model (no SavedModel needed beside it; tflite.py says
        why), else its SavedModel.  Batching applies to SavedModels only."""
        if self.prefer_tflite and (self.path / TFLITE_FILE).is_file():
            return TfliteLoader(self.name, self.version, self.path)
        return SavedModelLoader(self.name, self.version, self.path, self.tags, self.threads)

    def _replay_warmup(self, servable: Servable) -> None:
        """Run the recorded requests so tracing and allocation happen before traffic."""
        path = self.path / WARMUP_FILE
        if not path.is_file():
            return
        from tfdeploy.tfs import protos

        log_pb2 = protos.module("tensorflow_serving.apis.prediction_log_pb2")
        from tfdeploy.serving import inference

        count = 0
        for record in tf.data.TFRecordDataset(str(path)).take(MAX_WARMUP_RECORDS):
            if self.abandon.is_set():
                log.info("warmup of %s version %d stopped: load abandoned", self.name,
                         self.version)
                return
            entry = log_pb2.PredictionLog.FromString(record.numpy())
            kind = entry.WhichOneof("log_type")
            if kind == "predict_log":
                request = entry.predict_log.request
                inputs = {k: tensors.from_proto(v) for k, v in request.inputs.items()}
                key, _ = servable.signature(request.model_spec.signature_name)
                servable.call(key, inputs)
            elif kind in ("classify_log", "regress_log"):
                verb = "classify" if kind == "classify_log" else "regress"
                inference.classify_or_regress(verb, servable, getattr(entry, kind).request,
                                              check_method=False)
            elif kind == "multi_inference_log":
                inference.multi_inference(servable, entry.multi_inference_log.request,
                                          check_method=False)
            else:
                continue
            count += 1
        log.info("replayed %d warmup request(s) for %s version %d", count, self.name,
                 self.version)
