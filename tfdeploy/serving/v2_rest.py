"""REST front end of the Open Inference Protocol (KServe v2), beside TF Serving's /v1 API
on the same port:

    GET  /v2/health/live                                   200 while the server runs
    GET  /v2/health/ready                                  200 when every model is loaded
    GET  /v2                                               server metadata
    GET  /v2/models/{name}[/versions/{v}]                  model metadata (SignatureDef)
    GET  /v2/models/{name}[/versions/{v}]/ready            200 when that version serves
    POST /v2/models/{name}[/versions/{v}]/infer            JSON or binary tensors

An infer request runs the model's default signature, or the one its ``signature_name``
request parameter names; inputs and outputs are that signature's aliases.  It takes the
same request path as a v1 predict (``path.RequestPath``: admission, deadline, limits,
metrics), only the wire format differs.  Errors are the protocol's ``{"error": "..."}``
with the status code of the v1 API for the same failure.  Health and metadata never
enter the request path, so they answer while every inference slot is busy.
"""

from __future__ import annotations

import json
import re
import threading
from urllib.parse import unquote

from tfdeploy.serving.path import Call, deadline_in
from tfdeploy.tfs import json_body, v2
from tfdeploy.tfs.codes import Code, StatusError

_MODEL = re.compile(r"/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?"
                    r"(?:/(?P<verb>ready|infer))?")
PLATFORM = "tensorflow_savedmodel"
EXTENSIONS = ["binary_tensor_data"]


def server_metadata() -> dict:
    from importlib import metadata

    try:
        version = metadata.version("tfdeploy")
    except metadata.PackageNotFoundError:  # run from a source tree
        version = "0"
    return {"name": "tfdeploy-model-server", "version": version,
            "extensions": EXTENSIONS}


def parse_version(text: str | None) -> int | None:
    """A v2 version string ("" or absent: the latest); INVALID_ARGUMENT otherwise."""
    if not text:
        return None
    if not text.isdigit() or int(text) > (1 << 63) - 1:
        raise StatusError(Code.INVALID_ARGUMENT, f"Failed to convert version: {text} to "
                          "numeric.")
    return int(text)


def server_ready(model_server) -> tuple[bool, list[str]]:
    """Ready when every configured model has a version that serves; (ready, not ready)."""
    waiting = []
    for name in model_server.manager.model_names():
        try:
            model_server.manager.handle(name)
        except StatusError:
            waiting.append(name)
    return not waiting, waiting


def model_metadata(model_server, name: str, version: int | None) -> dict:
    """The v2 metadata of a model version: its default signature's inputs and outputs,
    every loaded version, and every signature's (the ``signatures`` parameter)."""
    servable = model_server.manager.handle(name, version)
    _, sd = servable.signature("")
    versions = sorted({str(s.version) for s in model_server.manager.statuses(name)
                       if s.servable is not None} | {str(servable.version)}, key=int)

    def tensors(infos) -> list[dict]:
        return [{"name": key, "datatype": v2.datatype_of_enum(info.dtype),
                 "shape": v2.shape_of(info.tensor_shape)} for key, info in
                sorted(infos.items())]

    # every signature's inputs and outputs too, for clients that pick one (a parameter:
    # the protocol's metadata describes one set of tensors)
    signatures = {key: {"inputs": tensors(d.inputs), "outputs": tensors(d.outputs)}
                  for key, d in sorted(servable.signature_defs.items())}
    return {"name": name, "versions": versions, "platform": PLATFORM,
            "inputs": tensors(sd.inputs), "outputs": tensors(sd.outputs),
            "parameters": {"signatures": signatures}}


def parse_body(raw: bytes) -> dict:
    """The JSON object of a request (or its JSON part), big numeric arrays as numpy
    arrays (as the v1 API parses them); INVALID_ARGUMENT naming what is wrong."""
    try:
        body = json_body.parse_body(raw)
    except json_body.BodyError as exc:
        raise StatusError(Code.INVALID_ARGUMENT, str(exc)) from None
    if not isinstance(body, dict):
        raise StatusError(Code.INVALID_ARGUMENT, "the request body is not a JSON object")
    return body


def expected_datatypes(signature_def) -> dict[str, str]:
    return {key: v2.datatype_of_enum(info.dtype) for key, info in signature_def.inputs.items()}


def signature_parameter(params: dict) -> str:
    value = params.get(v2.SIGNATURE_PARAMETER, "")
    if not isinstance(value, str):
        raise StatusError(Code.INVALID_ARGUMENT, "parameter signature_name must be a string")
    return value


class V2RestApi:
    """The v2 REST API of one ModelServer, transport-free (see ``rest_api.Reply``)."""

    def __init__(self, model_server):
        self.ms = model_server

    def handle(self, method: str, path: str, headers, body: bytes,
               received: float | None, cancelled: threading.Event | None = None,
               ) -> tuple[int, bytes, dict[str, str]]:
        """(status, body, extra headers) of one /v2 request; raises StatusError.
        ``path`` is as sent, not percent-decoded (without its query): the model name is
        decoded once after the match, so ``%2F`` in a name is no separator and ``%2532``
        names "%32".  ``cancelled``: set when the client went away (see
        ``RestApi.handle``)."""
        status, payload, extra = self._route(method, path, headers, body, received,
                                             cancelled or threading.Event())
        if isinstance(payload, dict):
            payload = json.dumps(payload, separators=(",", ":")).encode()
        return status, payload, extra

    def _route(self, method: str, path: str, headers, body: bytes, received: float | None,
               cancelled: threading.Event):
        if path in ("/v2/health/live", "/v2/health/ready", "/v2", "/v2/"):
            if method != "GET":
                raise StatusError(Code.INVALID_ARGUMENT, f"Malformed request: {method} {path}")
            if path.endswith("/live"):
                return 200, {"live": True}, {}
            if path.endswith("/ready"):
                ready, waiting = server_ready(self.ms)
                if not ready:
                    raise StatusError(Code.UNAVAILABLE,
                                      f"models not ready: {', '.join(waiting)}")
                return 200, {"ready": True}, {}
            return 200, server_metadata(), {}
        m = _MODEL.fullmatch(path)
        if m is None:
            raise StatusError(Code.NOT_FOUND, f"Not found: {method} {path}")
        # decoded once; a byte that is not UTF-8 kept as rest_api.decode_name keeps it
        name = unquote(m["name"], errors="surrogateescape")
        version = parse_version(m["version"])
        verb = m["verb"] or ""
        if (method == "POST") != (verb == "infer"):
            raise StatusError(Code.INVALID_ARGUMENT, f"Malformed request: {method} {path}")
        if verb == "ready":
            self.ms.manager.handle(name, version)  # NOT_FOUND when it does not serve
            return 200, {"name": name, "ready": True}, {}
        if verb == "":
            return 200, model_metadata(self.ms, name, version), {}
        return self._infer(name, version, headers, body, received, cancelled)

    def _infer(self, name: str, version: int | None, headers, raw: bytes,
               received: float | None, cancelled: threading.Event):
        timeout = self.ms.options.rest_api_timeout_in_ms
        call = Call("predict", "rest", name, version,
                    deadline=deadline_in(timeout / 1000 if timeout > 0 else None, received),
                    cancelled=cancelled)
        state: dict = {}

        def prepare() -> str:
            head, binary = v2.split_body(raw, headers.get(v2.HEADER_LENGTH))
            state["header"] = header = parse_body(bytes(head))
            state["binary"] = binary
            params = header.get("parameters") or {}
            if not isinstance(params, dict):
                raise StatusError(Code.INVALID_ARGUMENT, "'parameters' must be an object")
            return signature_parameter(params)

        def decode(signature_def) -> dict:
            inputs, _ = v2.parse_request(state["header"], state.pop("binary"),
                                         expected_datatypes(signature_def))
            return inputs

        header_fields: dict = {}
        names: list[str] = []  # the output filter: filled from the body by prepare_all

        def prepare_all() -> str:
            signature = prepare()
            names[:], binary, all_binary = v2.requested_outputs(state["header"])
            header_fields.update(binary=True if all_binary and not names else binary,
                                 id=state["header"].get("id"))
            return signature

        servable, _, outputs = self.ms.path.predict(call, decode, output_filter=names,
                                                    prepare=prepare_all)
        body, json_length = v2.render_response(
            outputs, header_fields["binary"], model_name=name,
            model_version=str(servable.version), id=header_fields["id"])
        if json_length is None:
            return 200, body, {}
        return 200, body, {"Inference-Header-Content-Length": str(json_length)}
