"""SIGTERM to a busy tfdeploy-model-server: it drains, says so, and exits by itself.

The kernel hands a process-wide signal to any thread that does not block it; when that is
one of TensorFlow's or gRPC's threads, nothing interrupts a main thread blocked in an
untimed wait, so a server that waits that way ignores ``docker stop``.  ``kill(2)`` given
the id of one of the server's threads signals the whole process and offers the signal to
that thread first, so the test makes that case happen every time (a plain ``kill PID``
usually lands on the main thread: ``test_server.py`` drains that way).  Requests are
bounded (4 threads, at most 10 each) and go to 127.0.0.1."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import tensorflow  # noqa: F401  (before tensorflow_serving: see tfdeploy/tfs/protos.py)
from conftest import ROOT
from PIL import Image
from servers import ServerProcess
from small_models import held_request, save_marking_gated_half_plus_two, serve_one
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from tfdeploy.serving.grpc_api import STOPPING_MESSAGE
from tfdeploy.tfs import tensors
from tfdeploy.tfs.requests import images_request

CLIENTS, PER_CLIENT = 4, 10
EXIT_BOUND = 30.0  # seconds: generous; a server that ignores the signal never exits
#: how an in-flight or later call may end while the server stops: answered (drained), or
#: refused because the server is going away
ALLOWED = {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}


def _request() -> predict_pb2.PredictRequest:
    """The seed client's predict_images request for a demo image."""
    image = np.asarray(Image.open(ROOT / "examples" / "scene_1.jpg").convert("RGB"))
    return images_request("deeplab", image)


def _worker_thread(pid: int) -> int:
    """The id of one of TensorFlow's or gRPC's threads in process ``pid``."""
    named = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        if int(task.name) != pid:
            named[int(task.name)] = (task / "comm").read_text().strip()
    for prefix in ("tf_", "grpc", "event_engine"):
        for tid, name in sorted(named.items()):
            if name.startswith(prefix):
                return tid
    raise AssertionError(f"no TensorFlow or gRPC thread in {sorted(named.values())}")


def test_sigterm_on_a_tensorflow_thread_under_load_drains_and_exits(demo_base, tmp_path):
    srv = ServerProcess("--model_name=deeplab", f"--model_base_path={demo_base}",
                        log_dir=tmp_path)
    try:
        srv.wait_available(1)
        request = _request()
        outcomes: list[grpc.StatusCode] = []
        answered = threading.Semaphore(0)
        server_gone = threading.Event()

        def client() -> None:
            channel = grpc.insecure_channel(srv.grpc_target)
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            for _ in range(PER_CLIENT):
                if server_gone.is_set():
                    break
                try:
                    stub.Predict(request, 60)
                    outcomes.append(grpc.StatusCode.OK)
                except grpc.RpcError as exc:
                    outcomes.append(exc.code())
                answered.release()
            channel.close()

        threads = [threading.Thread(target=client, daemon=True) for _ in range(CLIENTS)]
        for t in threads:
            t.start()
        for _ in range(CLIENTS):  # every client has had an answer and sent its next call
            assert answered.acquire(timeout=120), "the server answered no request"
        assert srv.proc.poll() is None, srv.log()
        os.kill(_worker_thread(srv.proc.pid), signal.SIGTERM)
        try:
            code = srv.proc.wait(EXIT_BOUND)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running {EXIT_BOUND:.0f} s after SIGTERM:\n"
                                 f"{srv.log()[-2000:]}") from None
        server_gone.set()
        for t in threads:
            t.join(70)
        assert not any(t.is_alive() for t in threads), "a client call hung"
        log = srv.log()
        assert code == 0, log[-2000:]  # drained and stopped (README "Under faults")
        assert "shutting down" in log and "stopped" in log, log[-2000:]
        assert outcomes.count(grpc.StatusCode.OK) >= CLIENTS
        assert set(outcomes) <= ALLOWED, outcomes
        assert len(outcomes) <= CLIENTS * PER_CLIENT
    finally:
        srv.stop(timeout=5)


def _until(check, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_a_draining_server_refuses_new_predictions_and_answers_the_one_in_flight(tmp_path):
    """While it drains, the server refuses new inference calls (UNAVAILABLE, saying why:
    a failover client moves on) but still answers status calls, and the call in flight
    gets its answer; then it exits 0 (serving/grpc_api.py, ``Flight``)."""
    model = save_marking_gated_half_plus_two(tmp_path / "marking")
    _, srv = serve_one(model, tmp_path, "gated", "--tensorflow_inter_op_parallelism=4")
    try:
        srv.wait_available(1, model="gated")
        channel = grpc.insecure_channel(srv.grpc_target)
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        gate, mark = tmp_path / "gate", tmp_path / "mark"
        held = stub.Predict.future(held_request(gate, mark), 120)
        _until(mark.exists, "the held request never ran")
        srv.proc.send_signal(signal.SIGTERM)
        _until(lambda: "draining" in srv.log(), "the server never began to drain")
        later = held_request(tmp_path / "open", tmp_path / "mark2")
        (tmp_path / "open").touch()
        try:
            stub.Predict(later, 30)
            raise AssertionError("a prediction sent during the drain was run")
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
            assert exc.details() == STOPPING_MESSAGE
        assert not (tmp_path / "mark2").exists()
        status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(
            get_model_status_pb2.GetModelStatusRequest(model_spec={"name": "gated"}), 30)
        assert [v.state for v in status.model_version_status] == [
            get_model_status_pb2.ModelVersionStatus.AVAILABLE]
        assert not held.done() and srv.proc.poll() is None  # still waiting for it
        gate.touch()
        answer = held.result(60)
        assert tensors.from_proto(answer.outputs["y"]).tolist() == [[2.5]]
        assert srv.proc.wait(EXIT_BOUND) == 0, srv.log()[-2000:]
    finally:
        srv.stop(timeout=5)
