"""Names both ends of the wire agree on: signature keys, tensor keys, default ports and
the default model name.  One place, so a renamed key cannot leave a peer behind."""

from __future__ import annotations

#: The seed's signature: float32 pixels [1,H,W,3] plus height/width -> int64 class map.
PREDICT_IMAGES = "predict_images"
#: Our encoded-image signature, and TF Serving's default signature key.
SERVING_DEFAULT = "serving_default"
DEFAULT_SIGNATURE = SERVING_DEFAULT

# Tensor keys of the two signatures.
IMAGES, HEIGHT, WIDTH = "images", "height", "width"
IMAGE_BYTES = "image_bytes"
SEGMENTATION_MAP = "segmentation_map"
MASK_PNG = "mask_png"

#: MetaGraph tag and method name TF Serving looks for.
SERVE_TAG = "serve"
PREDICT_METHOD = "tensorflow/serving/predict"

#: tensorflow_model_server's default ports (gRPC ``--port``; REST by convention).
GRPC_PORT = 8500
REST_PORT = 8501
DEFAULT_PORTS = {"grpc": GRPC_PORT, "rest": REST_PORT}

#: The model name our tools use when the user gives none.
DEFAULT_MODEL_NAME = "deeplab"
