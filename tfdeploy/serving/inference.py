"""Classify, Regress and MultiInference: tf.Example inputs in, classes/scores or
regression values out, with tensorflow_model_server's signature rules and messages.

The request's examples (with their context, if any) are serialized into one string tensor
fed to the signature's ``inputs`` tensor; the graph parses them (ParseExample) itself.
Without ``--enable_signature_method_name_check`` (the official default) any signature
shaped like a classification (one ``inputs``; ``classes`` and/or ``scores``) or
regression (one ``inputs``, one ``outputs``) signature may be used, as TF2 exports often
carry the predict method name; with it the method name must match too.
"""

from __future__ import annotations

import numpy as np
from google.protobuf import text_format

from tfdeploy.tfs import protos, tensors
from tfdeploy.tfs.codes import Code, StatusError
from tfdeploy.tfs.names import DEFAULT_SIGNATURE

CLASSIFY = "tensorflow/serving/classify"
REGRESS = "tensorflow/serving/regress"


def _invalid(message: str) -> StatusError:
    return StatusError(Code.INVALID_ARGUMENT, message)


def examples_tensor(input_proto) -> np.ndarray:
    """The request's ``Input`` as a [num_examples] string tensor of serialized Examples; a
    context is prepended to each example's bytes (protobuf merge: the example's own
    features win), as the official server does."""
    kind = input_proto.WhichOneof("kind")
    serialized: list[bytes] = []
    if kind == "example_list":
        serialized = [e.SerializeToString() for e in input_proto.example_list.examples]
    elif kind == "example_list_with_context":
        with_context = input_proto.example_list_with_context
        context = with_context.context.SerializeToString()
        serialized = [context + e.SerializeToString() for e in with_context.examples]
    if not serialized:
        raise _invalid("Input is empty.")
    out = np.empty(len(serialized), dtype=object)
    out[:] = serialized
    return out


def _lookup(servable, signature_name: str, not_found: str):
    key = signature_name or DEFAULT_SIGNATURE
    if key not in servable.signature_defs:
        raise _invalid(f"{not_found}{key}")
    return key, servable.signature_defs[key]


def _describe(signature_def) -> str:
    return text_format.MessageToString(signature_def)


def classification_tensors(signature_def, check_method: bool) -> tuple[str, list[str]]:
    """(input tensor name, [classes and/or scores tensor names]) of a classification
    signature, or the official error."""
    sd = signature_def
    if check_method and sd.method_name != CLASSIFY:
        raise _invalid(f"Expected classification signature method_name to be {CLASSIFY}. "
                       f"Was: {sd.method_name}")
    if len(sd.inputs) != 1:
        raise _invalid("Expected one input Tensor.")
    if len(sd.outputs) not in (1, 2):
        raise _invalid(f"Expected one or two output Tensors, found {len(sd.outputs)}")
    if "inputs" not in sd.inputs:
        raise _invalid(f"No classification inputs found in SignatureDef: {_describe(sd)}")
    outputs = [sd.outputs[k].name for k in ("classes", "scores") if k in sd.outputs]
    if not outputs:
        raise _invalid('Expected classification signature outputs to contain at least one '
                       f'of "classes" or "scores". Signature was: {_describe(sd)}')
    return sd.inputs["inputs"].name, outputs


def regression_tensors(signature_def, check_method: bool) -> tuple[str, list[str]]:
    """(input tensor name, [outputs tensor name]) of a regression signature."""
    sd = signature_def
    if check_method and sd.method_name != REGRESS:
        raise _invalid(f"Expected regression signature method_name to be {REGRESS}. "
                       f"Was: {sd.method_name}")
    if len(sd.inputs) != 1:
        raise _invalid("Expected one input Tensor.")
    if len(sd.outputs) != 1:
        raise _invalid("Expected one output Tensor.")
    if "inputs" not in sd.inputs:
        raise _invalid(f"No regression inputs found in SignatureDef: {_describe(sd)}")
    if "outputs" not in sd.outputs:
        raise _invalid(f"No regression outputs found in SignatureDef: {_describe(sd)}")
    return sd.inputs["inputs"].name, [sd.outputs["outputs"].name]


def _shape(array: np.ndarray) -> str:
    return "[" + ",".join(str(d) for d in array.shape) + "]"


def _dtype(array: np.ndarray) -> str:
    """The DataType name (DT_FLOAT, DT_STRING, ...) of a fetched array."""
    types_pb2 = protos.module("tensorflow.core.framework.types_pb2")
    try:
        return types_pb2.DataType.Name(tensors.dtype_enum(array))
    except (KeyError, ValueError):
        return str(array.dtype)


def classification_result(signature_def, num_examples: int, values: dict[str, np.ndarray],
                          result) -> None:
    """Fill a ClassificationResult from the fetched ``values`` (by tensor name)."""
    sd = signature_def
    classes = values.get(sd.outputs["classes"].name) if "classes" in sd.outputs else None
    scores = values.get(sd.outputs["scores"].name) if "scores" in sd.outputs else None
    for what, tensor, dtype in (("classes", classes, "DT_STRING"),
                                ("scores", scores, "DT_FLOAT")):
        if tensor is None:
            continue
        if tensor.ndim != 2:
            raise _invalid("Expected Tensor shape: [batch_size num_classes] but got "
                           f"{_shape(tensor)}")
        if _dtype(tensor) != dtype:
            raise _invalid(f"Expected {what} Tensor of {dtype}. Got: {_dtype(tensor)}")
        if tensor.shape[0] != num_examples:
            raise _invalid(f"Expected {what} output batch size of {num_examples}. "
                           f"Got: {tensor.shape[0]}")
    if classes is not None and scores is not None and classes.shape[1] != scores.shape[1]:
        raise _invalid("Tensors class and score should match in dim_size(1). Got "
                       f"{classes.shape[1]} vs. {scores.shape[1]}")
    num_classes = (classes if classes is not None else scores).shape[1]
    for i in range(num_examples):
        classifications = result.classifications.add()
        for c in range(num_classes):
            entry = classifications.classes.add()
            if classes is not None:
                entry.label = bytes(classes[i, c]).decode("utf-8", "replace")
            if scores is not None:
                entry.score = float(scores[i, c])


def regression_result(signature_def, num_examples: int, values: dict[str, np.ndarray],
                      result) -> None:
    """Fill a RegressionResult from the fetched ``values`` (by tensor name)."""
    tensor = values[signature_def.outputs["outputs"].name]
    if not (tensor.ndim == 1 or (tensor.ndim == 2 and tensor.shape[1] == 1)):
        raise _invalid("Expected output Tensor shape to be either [batch_size] or "
                       f"[batch_size, 1] but got {_shape(tensor)}")
    if tensor.shape[0] != num_examples:
        raise _invalid("Input batch size did not match output batch size: "
                       f"{num_examples} vs. {tensor.shape[0]}")
    if _dtype(tensor) != "DT_FLOAT":
        raise _invalid(f"Expected output Tensor of DT_FLOAT.  Got: {_dtype(tensor)}")
    for value in tensor.reshape(-1):
        result.regressions.add(value=float(value))


def _model_spec(target, name: str, signature_name: str, version: int) -> None:
    target.name = name
    target.signature_name = signature_name
    target.version.value = version


def classify_or_regress(kind: str, servable, request, check_method: bool,
                        timeout_ms: int = 0):
    """A Classification- or RegressionResponse (``kind`` "classify" or "regress") for
    ``request`` run on ``servable``."""
    classify = kind == "classify"
    pb2 = protos.module("tensorflow_serving.apis."
                        + ("classification_pb2" if classify else "regression_pb2"))
    _, sd = _lookup(servable, request.model_spec.signature_name,
                    "No signature was found with the name: ")
    tensors_of = classification_tensors if classify else regression_tensors
    input_name, outputs = tensors_of(sd, check_method)
    examples = examples_tensor(request.input)
    values = dict(zip(outputs, servable.run_tensors({input_name: examples}, tuple(outputs),
                                                    timeout_ms), strict=True))
    response = pb2.ClassificationResponse() if classify else pb2.RegressionResponse()
    _model_spec(response.model_spec, request.model_spec.name,
                request.model_spec.signature_name, servable.version)
    fill = classification_result if classify else regression_result
    fill(sd, len(examples), values, response.result)
    return response


def multi_inference(servable, request, check_method: bool, timeout_ms: int = 0):
    """A MultiInferenceResponse: every task's signature run in one session call over the
    same examples (all tasks name one model; signatures distinct)."""
    pb2 = protos.module("tensorflow_serving.apis.inference_pb2")
    model_name, seen, inputs, fetches, tasks = "", set(), set(), [], []
    for task in request.tasks:
        name = task.model_spec.name
        if not name:
            raise _invalid("Found ModelSpec with an empty model name.")
        if model_name and name != model_name:
            raise _invalid("All ModelSpecs in a MultiInferenceRequest must access the same "
                           "model name.")
        model_name = name
        key = task.model_spec.signature_name or DEFAULT_SIGNATURE
        if key in seen:
            raise _invalid(f"Duplicate evaluation of signature: {key}")
        seen.add(key)
        _, sd = _lookup(servable, key, "Requested signature not found in model graph: ")
        if task.method_name == CLASSIFY:
            input_name, outputs = classification_tensors(sd, check_method)
        elif task.method_name == REGRESS:
            input_name, outputs = regression_tensors(sd, check_method)
        else:
            raise StatusError(Code.UNIMPLEMENTED,
                              f"Unsupported signature method_name: {task.method_name}")
        inputs.add(input_name)
        fetches += [o for o in outputs if o not in fetches]
        tasks.append((task, sd))
    examples = examples_tensor(request.input)
    values = dict(zip(fetches, servable.run_tensors({n: examples for n in sorted(inputs)},
                                                    tuple(fetches), timeout_ms),
                      strict=True))
    response = pb2.MultiInferenceResponse()
    for task, sd in tasks:
        result = response.results.add()
        if task.method_name == CLASSIFY:
            classification_result(sd, len(examples), values, result.classification_result)
        else:
            regression_result(sd, len(examples), values, result.regression_result)
        _model_spec(result.model_spec, task.model_spec.name, task.model_spec.signature_name,
                    servable.version)
    return response
