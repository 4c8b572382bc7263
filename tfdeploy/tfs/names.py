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

#: The export's class names, served by the model itself: string [N, classes] (the names
#: once per row) out of one int32 [N] input whose values are ignored (TF Serving's REST
#: API refuses a signature without inputs; its batching needs a batch dimension).
CLASS_NAMES = "class_names"
CLASS_NAMES_INPUT = "unused"

#: MetaGraph tag and method name TF Serving looks for.
SERVE_TAG = "serve"
PREDICT_METHOD = "tensorflow/serving/predict"

#: tensorflow_model_server's default ports (gRPC ``--port``; REST by convention).
GRPC_PORT = 8500
REST_PORT = 8501
DEFAULT_PORTS = {"grpc": GRPC_PORT, "rest": REST_PORT}

#: The model name our tools use when the user gives none.
DEFAULT_MODEL_NAME = "deeplab"

#: Model names our generated files and commands accept.  tensorflow_model_server takes
#: any string, but its REST API addresses a model as ``/v1/models/{name}`` with
#: ``[^/:]+``, and the official image turns ``MODEL_NAME`` into the path segment
#: ``/models/{name}``: a name outside this set cannot be reached or breaks the path.
MODEL_NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"


def model_name_problem(name: object) -> str | None:
    """Why ``name`` cannot be a model name in a file or command we write, or None."""
    import re

    if not isinstance(name, str) or not re.fullmatch(MODEL_NAME_PATTERN, name):
        return (f"{name!r} is not a model name we can serve (letters, digits, '.', '_' and "
                "'-', starting with a letter or digit, at most 128 characters: TF "
                "Serving's REST API cannot address a name with '/' or ':')")
    return None
