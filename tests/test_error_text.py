"""Clients get TF Serving's kind of error text, never Python internals (issue 24): an
exception inside the server reaches the client as INTERNAL with a fixed message, and its
text (paths, reprs, tracebacks) goes to the server's log only."""

from __future__ import annotations

import logging

from tfdeploy.serving.grpc_api import _status_error
from tfdeploy.tfs.codes import INTERNAL_MESSAGE, Code


def test_internal_errors_reach_clients_as_a_fixed_text_and_the_log_in_full(caplog):
    secret = "open('/srv/models/.aws/credentials') failed: <object at 0x7f00>"
    with caplog.at_level(logging.ERROR):
        error = _status_error(RuntimeError(secret))
    assert error.code is Code.INTERNAL
    assert error.message == INTERNAL_MESSAGE and "credentials" not in error.message
    assert secret in caplog.text  # the operator still sees what happened
