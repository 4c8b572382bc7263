"""tensorflow_model_server's session thread flags (--tensorflow_session_parallelism,
--tensorflow_intra_op_parallelism, --tensorflow_inter_op_parallelism) reach each
version's TensorFlow session, read as it reads them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from servers import ServerProcess

from tfdeploy.client.pool import connect
from tfdeploy.export.warmup import encode_png, probe_image
from tfdeploy.tfs.codes import StatusError

ALL_THREE = ("Either configure server_options.tensorflow_session_parallelism or "
             "(server_options.tensorflow_intra_op_parallelism, "
             "server_options.tensorflow_inter_op_parallelism) separately. "
             "You cannot configure all.")


@pytest.mark.parametrize(("session", "intra", "inter", "threads"), [
    (0, 0, 0, (0, 0)),      # TensorFlow's choice
    (3, 0, 0, (3, 3)),      # the session flag sets both
    (3, 2, 0, (2, 0)),      # intra or inter set: they win, the other stays automatic
    (0, 0, 1, (0, 1)),
    (0, 2, 1, (2, 1)),
])
def test_session_threads_from_the_three_flags(session, intra, inter, threads):
    from tfdeploy.serving.servable import session_threads

    assert session_threads(session, intra, inter) == threads


def test_all_three_is_refused_with_the_official_message():
    from tfdeploy.serving.servable import session_threads

    with pytest.raises(StatusError, match="You cannot configure all"):
        session_threads(1, 1, 1)


def test_a_loaded_versions_session_has_the_threads(demo_base: Path):
    from tfdeploy.serving.servable import SavedModelLoader

    servable = SavedModelLoader("deeplab", 1, demo_base / "1", threads=(1, 1)).load()
    config = servable.session._config
    assert (config.intra_op_parallelism_threads, config.inter_op_parallelism_threads) == (1, 1)
    default = SavedModelLoader("deeplab", 1, demo_base / "1").load().session._config
    assert (default.intra_op_parallelism_threads, default.inter_op_parallelism_threads) == (0, 0)


def test_server_serves_with_one_inter_op_thread(demo_base: Path, tmp_path: Path):
    srv = ServerProcess("--model_name=deeplab", f"--model_base_path={demo_base}",
                        "--tensorflow_inter_op_parallelism=1",
                        "--tensorflow_intra_op_parallelism=2", log_dir=tmp_path)
    try:
        srv.wait_available(1)
        pool = connect(srv.grpc_target, "grpc", timeout=120, retries=0)
        assert pool.predict_png("deeplab", encode_png(probe_image(64, 48)))[:4] == b"\x89PNG"
        assert "not implemented" not in srv.log()   # an implemented flag: no warning
    finally:
        srv.stop()


def test_server_refuses_all_three_at_start(demo_base: Path):
    from conftest import ROOT

    proc = subprocess.run(
        [sys.executable, "-m", "tfdeploy.serving", "--model_name=deeplab",
         f"--model_base_path={demo_base}", "--port=0", "--grpc_host=127.0.0.1",
         "--tensorflow_session_parallelism=2", "--tensorflow_intra_op_parallelism=1",
         "--tensorflow_inter_op_parallelism=1"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert ALL_THREE in proc.stderr
