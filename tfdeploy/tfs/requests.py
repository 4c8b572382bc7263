"""TF Serving request messages, built in one place for clients, warmup records and tests.

Encoded-image requests are built without numpy (a string tensor is just bytes), so the
client's fast path imports neither TensorFlow nor numpy.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from tfdeploy.tfs import protos
from tfdeploy.tfs.names import (
    HEIGHT,
    IMAGE_BYTES,
    IMAGES,
    MASK_PNG,
    PREDICT_IMAGES,
    SERVING_DEFAULT,
    WIDTH,
)

if TYPE_CHECKING:
    import numpy as np

DT_STRING = 7  # tensorflow.DataType.DT_STRING (kept numeric: no numpy import here)


def set_model_spec(spec, model: str, version: int | None = None, signature: str = "",
                   label: str | None = None) -> None:
    """Fill a ModelSpec: a version number or a label (not both), and a signature key.
    ``version`` may itself be a label (a str): callers pass "which version" as one value."""
    spec.name = model
    if isinstance(version, str):
        version, label = None, version
    if version is not None:
        spec.version.value = version
    elif label:
        spec.version_label = label
    if signature:
        spec.signature_name = signature


def predict_request(model: str, signature: str, inputs: Mapping[str, np.ndarray],
                    version: int | None = None, outputs: Iterable[str] = ()):
    """A PredictRequest with ``inputs`` as TensorProtos (raw ``tensor_content``)."""
    from tfdeploy.tfs import tensors

    request = protos.module("tensorflow_serving.apis.predict_pb2").PredictRequest()
    set_model_spec(request.model_spec, model, version, signature)
    for key, value in inputs.items():
        request.inputs[key].CopyFrom(tensors.to_proto(value))
    request.output_filter.extend(outputs)
    return request


def images_request(model: str, image: np.ndarray, version: int | None = None):
    """The seed's ``predict_images`` request for one RGB image [H, W, 3]: float32 pixels
    [1, H, W, 3] plus ``height`` and ``width`` of shape [1], as the tutorial's client
    sends them."""
    import numpy as np

    h, w = image.shape[:2]
    return predict_request(model, PREDICT_IMAGES, {
        IMAGES: image[None].astype(np.float32),
        HEIGHT: np.array([h], np.int32), WIDTH: np.array([w], np.int32)}, version)


def encoded_image_request(model: str, images: Iterable[bytes], version: int | None = None,
                          signature: str = SERVING_DEFAULT,
                          outputs: Iterable[str] = (MASK_PNG,)):
    """A PredictRequest of encoded images (``image_bytes`` string [N]); no numpy needed."""
    request = protos.module("tensorflow_serving.apis.predict_pb2").PredictRequest()
    set_model_spec(request.model_spec, model, version, signature)
    tensor = request.inputs[IMAGE_BYTES]
    tensor.dtype = DT_STRING
    tensor.string_val.extend(images)
    tensor.tensor_shape.dim.add(size=len(tensor.string_val))
    request.output_filter.extend(outputs)
    return request


def metadata_request(model: str, version: int | None = None):
    meta_pb2 = protos.module("tensorflow_serving.apis.get_model_metadata_pb2")
    request = meta_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    set_model_spec(request.model_spec, model, version)
    return request


def status_request(model: str, version: int | None = None):
    status_pb2 = protos.module("tensorflow_serving.apis.get_model_status_pb2")
    request = status_pb2.GetModelStatusRequest()
    set_model_spec(request.model_spec, model, version)
    return request


def signature_defs(metadata_response) -> dict:
    """SignatureDef protos (key -> SignatureDef) of a GetModelMetadataResponse."""
    meta_pb2 = protos.module("tensorflow_serving.apis.get_model_metadata_pb2")
    sigs = meta_pb2.SignatureDefMap()
    metadata_response.metadata["signature_def"].Unpack(sigs)
    return dict(sigs.signature_def)


def version_states(status_response) -> dict[int, str]:
    """version -> state name (``AVAILABLE``, ``LOADING``...) of a GetModelStatusResponse."""
    status_pb2 = protos.module("tensorflow_serving.apis.get_model_status_pb2")
    state = status_pb2.ModelVersionStatus.State
    return {int(v.version): state.Name(v.state) for v in status_response.model_version_status}
