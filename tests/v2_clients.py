"""Talk the Open Inference Protocol to a running server with clients no one here wrote
(tritonclient over HTTP or gRPC, KServe's REST or gRPC client); print a JSON report.

Runs in .venv-kserve (these clients pin protobuf < 7), started by tests/test_v2.py:

    python tests/v2_clients.py CLIENT REST_HOST:PORT GRPC_HOST:PORT IMAGE...

Reports readiness, half_plus_two's y for x = [1, 2.5, -4], each image's segmentation_map
(shape and sha256), and whether an unknown model and a wrong datatype were refused.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

X = np.array([[1.0], [2.5], [-4.0]], np.float32)


def digest(array: np.ndarray) -> dict:
    array = np.ascontiguousarray(array, dtype=np.uint8)
    return {"shape": list(array.shape), "sha256": hashlib.sha256(array.tobytes()).hexdigest()}


def images(paths: list[str]) -> list[tuple[str, np.ndarray]]:
    return [(Path(p).name, np.array([Path(p).read_bytes()], dtype=object)) for p in paths]


def triton(kind: str, rest: str, grpc_target: str, paths: list[str]) -> dict:
    if kind == "http":
        import tritonclient.http as tc
        from tritonclient.utils import InferenceServerException

        client = tc.InferenceServerClient(rest, network_timeout=300)
    else:
        import tritonclient.grpc as tc
        from tritonclient.utils import InferenceServerException

        client = tc.InferenceServerClient(grpc_target)

    def infer(model: str, name: str, array: np.ndarray, datatype: str, output: str):
        tensor = tc.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        return client.infer(model, [tensor], outputs=[tc.InferRequestedOutput(output)]
                            ).as_numpy(output)

    report = {"ready": client.is_server_ready() and client.is_model_ready("deeplab"),
              "y": infer("hpt", "x", X, "FP32", "y").ravel().tolist(),
              "masks": {name: digest(infer("deeplab", "image_bytes", array, "BYTES",
                                            "segmentation_map"))
                        for name, array in images(paths)},
              "errors": {}}
    for case, model, datatype, array in [("unknown model", "nope", "FP32", X),
                                         ("wrong datatype", "hpt", "INT32",
                                          X.astype(np.int32))]:
        try:
            infer(model, "x", array, datatype, "y")
            report["errors"][case] = False
        except InferenceServerException:
            report["errors"][case] = True
    return report


async def kserve(kind: str, rest: str, grpc_target: str, paths: list[str]) -> dict:
    from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest
    from kserve.inference_client import RESTConfig
    from kserve.protocol.infer_type import RequestedOutput

    if kind == "rest":
        client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=300))
        base = f"http://{rest}"

        async def send(request: InferRequest):
            return await client.infer(base, request, model_name=request.model_name)

        ready = await client.is_server_ready(base) and \
            await client.is_model_ready(base, "deeplab")
    else:
        client = InferenceGRPCClient(grpc_target, timeout=300, retries=0)

        async def send(request: InferRequest):
            return await client.infer(request)

        ready = await client.is_server_ready() and await client.is_model_ready("deeplab")

    async def infer(model: str, name: str, array: np.ndarray, datatype: str, output: str):
        tensor = InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array, binary_data=True)
        response = await send(InferRequest(model, [tensor], request_outputs=[
            RequestedOutput(output, {"binary_data": True})]))
        (out,) = [o for o in response.outputs if o.name == output]
        return out.as_numpy()

    report = {"ready": bool(ready), "y": (await infer("hpt", "x", X, "FP32", "y")).ravel()
              .tolist(), "masks": {}, "errors": {}}
    for name, array in images(paths):
        report["masks"][name] = digest(await infer("deeplab", "image_bytes", array, "BYTES",
                                                   "segmentation_map"))
    for case, model, datatype, array in [("unknown model", "nope", "FP32", X),
                                         ("wrong datatype", "hpt", "INT32",
                                          X.astype(np.int32))]:
        try:
            await infer(model, "x", array, datatype, "y")
            report["errors"][case] = False
        except Exception:  # httpx.HTTPStatusError or grpc.aio.AioRpcError
            report["errors"][case] = True
    return report


def main() -> None:
    client, rest, grpc_target, *paths = sys.argv[1:]
    family, _, kind = client.partition("-")
    if family == "triton":
        report = triton(kind, rest, grpc_target, paths)
    else:
        report = asyncio.run(kserve(kind, rest, grpc_target, paths))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
