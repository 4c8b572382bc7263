"""Fast unit tests of the embedded model server's core (``tfdeploy/serving``): version
policy, Manager state transitions and server-side batching, with fake loaders and
servables.  No sockets, no subprocesses, no TensorFlow: they pin today's behaviour so
later rewrites of the Manager and Batcher can be checked in seconds, not minutes.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format

from tfdeploy.serving import batching, policy
from tfdeploy.serving.batching import Batcher, BatchOptions, batchable, make_batchers
from tfdeploy.tfs import protos
from tfdeploy.tfs.codes import INTERNAL_MESSAGE, Code, StatusError

_TF_LOADED_BEFORE = "tensorflow.python" in sys.modules


from tfdeploy.serving import manager as manager_mod  # noqa: E402

Manager = manager_mod.Manager
START, LOADING, AVAILABLE, UNLOADING, END = (manager_mod.START, manager_mod.LOADING,
                                             manager_mod.AVAILABLE, manager_mod.UNLOADING,
                                             manager_mod.END)

fs_pb2 = protos.module("tensorflow_serving.config.file_system_storage_path_source_pb2")
msc_pb2 = protos.module("tensorflow_serving.config.model_server_config_pb2")
meta_graph_pb2 = protos.module("tensorflow.core.protobuf.meta_graph_pb2")
VersionPolicy = fs_pb2.FileSystemStoragePathSourceConfig.ServableVersionPolicy


def test_these_tests_do_not_load_tensorflow():
    """The point of this file is speed: importing what it tests must not pull in TF."""
    assert _TF_LOADED_BEFORE or "tensorflow.python" not in sys.modules


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll ``predicate`` (bounded), for state that another thread changes."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.002)


def status_error(call: Callable[[], object]) -> StatusError:
    with pytest.raises(StatusError) as info:
        call()
    return info.value


# -- version policy ----------------------------------------------------------------------
def parse_policy(text: str):
    return text_format.Parse(text, VersionPolicy())


@pytest.mark.parametrize("text, on_disk, aspired, described", [
    ("", [1, 2, 3], {3}, "latest 1"),
    ("latest {}", [1, 2, 3], {3}, "latest 1"),
    ("latest { num_versions: 1 }", [3, 1, 2], {3}, "latest 1"),
    ("latest { num_versions: 2 }", [1, 3, 2, 3], {2, 3}, "latest 2"),
    ("latest { num_versions: 5 }", [4, 7], {4, 7}, "latest 5"),
    ("all {}", [1, 2, 3], {1, 2, 3}, "all"),
    ("specific { versions: 3 versions: 1 }", [1, 2, 3], {1, 3}, "specific [1, 3]"),
    ("specific { versions: 9 versions: 2 }", [1, 2, 3], {2}, "specific [2, 9]"),
    ("specific { versions: 9 }", [1, 2, 3], set(), "specific [9]"),
])
def test_policy_aspired_versions(text: str, on_disk: list[int], aspired: set[int],
                                 described: str):
    """latest N (default 1, also for ``latest {}``), all, and specific versions, where a
    specific version that is not on disk is simply not aspired (nothing to load)."""
    p = parse_policy(text)
    assert policy.aspired_versions(p, on_disk) == aspired
    assert policy.describe(p) == described


@pytest.mark.parametrize("text", ["", "latest { num_versions: 3 }", "all {}",
                                  "specific { versions: 1 }"])
def test_policy_on_empty_disk_aspires_nothing(text: str):
    assert policy.aspired_versions(parse_policy(text), []) == set()


def test_policy_none_means_latest_one():
    """A model config without ``model_version_policy`` serves the latest version only."""
    assert policy.aspired_versions(None, iter([5, 2, 9])) == {9}
    assert policy.describe(None) == "latest 1"


def test_policy_from_model_config_text():
    """The message parsed from a --model_config_file is the one the policy functions take."""
    config = text_format.Parse(
        'model_config_list { config { name: "m" base_path: "/x" '
        "model_version_policy { specific { versions: 2 versions: 4 } } } }",
        msc_pb2.ModelServerConfig())
    p = config.model_config_list.config[0].model_version_policy
    assert policy.aspired_versions(p, range(1, 6)) == {2, 4}
    assert policy.describe(p) == "specific [2, 4]"


# -- Manager -----------------------------------------------------------------------------
@dataclass
class FakeServable:
    name: str
    version: int
    path: Path
    log: list[tuple[str, str, int]]
    closed: bool = False

    def close(self) -> None:
        self.closed = True
        self.log.append(("close", self.name, self.version))


@dataclass
class Loads:
    """Loader factory for the Manager: every load attempt and close lands in ``log`` in
    order; ``failures[(name, version)]`` loads of a version fail before one succeeds."""
    failures: dict[tuple[str, int], float] = field(default_factory=dict)
    error: Callable[[int], Exception] = lambda v: RuntimeError(f"bad version {v}\ndetails")
    during_load: Callable[[str, int], None] | None = None
    log: list[tuple[str, str, int]] = field(default_factory=list)

    def __call__(self, name: str, version: int, path: Path) -> object:
        loads = self

        class _Loader:
            def load(self) -> FakeServable:
                loads.log.append(("load", name, version))
                if loads.during_load is not None:
                    loads.during_load(name, version)
                if loads.failures.get((name, version), 0) > 0:
                    loads.failures[(name, version)] -= 1
                    raise loads.error(version)
                return FakeServable(name, version, path, loads.log)

        return _Loader()

    def attempts(self, name: str, version: int) -> int:
        return self.log.count(("load", name, version))


def paths(*versions: int) -> dict[int, Path]:
    return {v: Path(f"/models/m/{v}") for v in versions}


def aspire(manager, name: str, versions: dict[int, Path]) -> None:
    """What a Source poll does, then wait for the loads and unloads it started (they run
    on the Manager's own threads)."""
    manager.set_aspired_versions(name, versions)
    assert manager.wait_idle(10)


def states(manager, name: str = "m") -> dict[int, int]:
    return {vs.version: vs.state for vs in manager.statuses(name)}


def test_manager_loads_an_aspired_version():
    loads = Loads()
    m = Manager(loads)
    aspire(m, "m", paths(1))
    [vs] = m.statuses("m")
    assert (vs.version, vs.state, vs.error, vs.failures) == (1, AVAILABLE, None, 0)
    servable = m.handle("m")
    assert servable is vs.servable
    assert (servable.version, servable.path) == (1, Path("/models/m/1"))
    assert m.model_names() == ["m"]
    assert loads.log == [("load", "m", 1)]


def test_manager_state_constants_are_model_version_status_states():
    """get_model_status answers with these numbers (ModelVersionStatus.State)."""
    assert (START, LOADING, AVAILABLE, UNLOADING, END) == (10, 20, 30, 40, 50)


def test_manager_loads_new_version_before_unloading_old():
    """Availability preserving: while version 2 loads, version 1 is AVAILABLE and serves;
    it is closed only after version 2 is AVAILABLE."""
    loads = Loads()
    m = Manager(loads)
    aspire(m, "m", paths(1))
    old = m.handle("m")
    seen: dict[str, object] = {}

    def during_load(name: str, version: int) -> None:
        if version == 2:
            seen["states"], seen["serving"] = states(m), m.handle("m").version

    loads.during_load = during_load
    aspire(m, "m", paths(2))
    assert seen == {"states": {2: LOADING, 1: AVAILABLE}, "serving": 1}
    assert loads.log == [("load", "m", 1), ("load", "m", 2), ("close", "m", 1)]
    assert states(m) == {2: AVAILABLE, 1: END}
    assert old.closed and m.statuses("m", version=1)[0].servable is None
    assert m.handle("m").version == 2
    err = status_error(lambda: m.handle("m", version=1))
    assert err.code is Code.NOT_FOUND and err.message == (
        "Servable not found for request: Specific(m, 1)")


def test_manager_requests_are_served_while_another_thread_loads():
    """A slow load runs outside the request lock: handle() from another thread answers
    with the old version at once instead of waiting for the load."""
    loads = Loads()
    m = Manager(loads)
    aspire(m, "m", paths(1))
    entered, release = threading.Event(), threading.Event()

    def during_load(name: str, version: int) -> None:
        entered.set()
        assert release.wait(5)

    loads.during_load = during_load
    m.set_aspired_versions("m", paths(2))  # returns at once: the load is a loader's
    try:
        assert entered.wait(5)
        assert m.handle("m").version == 1
        assert states(m) == {2: LOADING, 1: AVAILABLE}
    finally:
        release.set()
    assert m.wait_idle(5)
    assert m.handle("m").version == 2


def test_manager_serves_latest_of_several_and_explicit_versions():
    loads = Loads()
    m = Manager(loads)
    aspire(m, "m", paths(3, 1, 2))
    assert [e[2] for e in loads.log] == [1, 2, 3]  # loaded in version order
    assert m.handle("m").version == 3
    assert m.handle("m", version=1).version == 1
    assert m.resolve("m") == 3 and m.resolve("m", version=2) == 2
    aspire(m, "m", paths(2, 3, 4))
    # 1 may leave at once (2 and 3, aspired, serve), on the unload thread while 4 loads
    assert sorted(loads.log[3:]) == [("close", "m", 1), ("load", "m", 4)]
    assert states(m) == {4: AVAILABLE, 3: AVAILABLE, 2: AVAILABLE, 1: END}
    assert [vs.version for vs in m.statuses("m")] == [4, 3, 2, 1]  # newest first


def test_manager_does_not_reload_versions_already_available():
    loads = Loads()
    m = Manager(loads)
    aspire(m, "m", paths(1))
    first = m.handle("m")
    aspire(m, "m", paths(1))
    assert loads.log == [("load", "m", 1)]
    assert m.handle("m") is first and not first.closed


def test_manager_reloads_a_version_aspired_again_after_unload():
    """Rolling back (version 1 aspired again after 2 replaced it) loads 1 afresh, and
    "latest" then means the highest AVAILABLE version, 1."""
    loads = Loads()
    m = Manager(loads)
    aspire(m, "m", paths(1))
    first = m.handle("m")
    aspire(m, "m", paths(2))
    aspire(m, "m", paths(1))
    assert loads.log == [("load", "m", 1), ("load", "m", 2), ("close", "m", 1),
                         ("load", "m", 1), ("close", "m", 2)]
    assert states(m) == {2: END, 1: AVAILABLE}
    again = m.handle("m")
    assert again.version == 1 and again is not first and not again.closed


def test_manager_labels():
    m = Manager(Loads())
    aspire(m, "m", paths(1, 2))
    m.set_labels("m", {"stable": 1, "canary": 2, "gone": 7})
    assert m.resolve("m", label="canary") == 2
    assert m.handle("m", label="stable").version == 1
    assert m.resolve("m", version=1, label="canary") == 2  # the label wins
    # GetModelStatus ignores labels, as tensorflow_model_server's: every version
    assert [vs.version for vs in m.statuses("m", label="stable")] == [2, 1]
    err = status_error(lambda: m.handle("m", label="beta"))
    assert err.code is Code.INVALID_ARGUMENT  # as TF Serving: labels resolve first
    assert err.message == "Unrecognized servable version label: beta"
    err = status_error(lambda: m.handle("nosuch", label="beta"))
    assert (err.code, err.message) == (Code.INVALID_ARGUMENT,
                                       "Unrecognized servable version label: beta")
    err = status_error(lambda: m.handle("m", label="gone"))
    assert (err.code, err.message) == (Code.NOT_FOUND,
                                       "Servable not found for request: Specific(m, 7)")
    m.set_labels("m", {"stable": 2})  # replaces, not merges
    assert m.handle("m", label="stable").version == 2
    assert status_error(lambda: m.resolve("m", label="canary")).code is Code.INVALID_ARGUMENT


def test_manager_set_labels_before_versions_registers_the_model():
    """Labels may arrive (from the config) before any version loaded: the model is known
    but has nothing to serve yet."""
    m = Manager(Loads())
    m.set_labels("m", {"stable": 1})
    assert m.model_names() == ["m"]
    err = status_error(lambda: m.statuses("m"))  # tensorflow_model_server's words
    assert (err.code, err.message) == (Code.NOT_FOUND, "Could not find any versions of model m")
    err = status_error(lambda: m.handle("m"))
    assert (err.code, err.message) == (Code.NOT_FOUND,
                                       "Servable not found for request: Latest(m)")
    assert status_error(lambda: m.handle("m", label="stable")).code is Code.NOT_FOUND


@pytest.mark.parametrize("call,message", [
    ("resolve", "Servable not found for request: Latest(other)"),
    ("handle", "Servable not found for request: Latest(other)"),
    ("statuses", "Could not find any versions of model other")])
def test_manager_unknown_model_is_not_found(call: str, message: str):
    m = Manager(Loads())
    aspire(m, "m", paths(1))
    err = status_error(lambda: getattr(m, call)("other"))
    assert (err.code, err.message) == (Code.NOT_FOUND, message)


def test_manager_unknown_version_is_not_found():
    """resolve() passes an explicit version through; handle() and statuses() check it."""
    m = Manager(Loads())
    aspire(m, "m", paths(1))
    assert m.resolve("m", version=9) == 9
    err = status_error(lambda: m.handle("m", version=9))
    assert (err.code, err.message) == (Code.NOT_FOUND,
                                       "Servable not found for request: Specific(m, 9)")
    err = status_error(lambda: m.statuses("m", version=9))
    assert (err.code, err.message) == (Code.NOT_FOUND, "Could not find version 9 of model m")


def test_manager_failed_load_is_end_with_internal_error():
    """A broken version never raises out of the Manager: it is END with an INTERNAL error
    naming the first line of the loader's message, whatever the loader's own code."""
    loads = Loads(failures={("m", 1): float("inf"), ("m", 2): float("inf")})
    loads.error = lambda v: (RuntimeError(f"bad version {v}\ntraceback noise") if v == 1
                             else StatusError(Code.FAILED_PRECONDITION, "no serve graph"))
    m = Manager(loads, max_load_retries=0)
    aspire(m, "m", paths(1, 2))
    s = {vs.version: vs for vs in m.statuses("m")}
    assert (s[1].state, s[1].error, s[1].failures, s[1].servable) == (
        END, (Code.INTERNAL, "load failed: bad version 1"), 1, None)
    assert (s[2].state, s[2].error) == (END, (Code.INTERNAL, "load failed: no serve graph"))
    err = status_error(lambda: m.handle("m"))
    assert (err.code, err.message) == (Code.NOT_FOUND,
                                       "Servable not found for request: Latest(m)")


def test_manager_failed_new_version_keeps_the_old_one_serving():
    """Availability preserving: a new version that fails to load (after its retries) never
    unloads the version that serves; the failed one shows END with its error."""
    loads = Loads(failures={("m", 2): float("inf")})
    m = Manager(loads, max_load_retries=0)
    aspire(m, "m", paths(1))
    aspire(m, "m", paths(2))
    aspire(m, "m", paths(2))  # later polls change nothing
    assert loads.log == [("load", "m", 1), ("load", "m", 2)]
    assert states(m) == {2: END, 1: AVAILABLE}
    assert m.handle("m").version == 1
    assert m.statuses("m", 2)[0].error == (Code.INTERNAL, "load failed: bad version 2")


def test_manager_unloads_the_old_version_once_a_later_one_loads():
    loads = Loads(failures={("m", 2): float("inf")})
    m = Manager(loads, max_load_retries=0)
    aspire(m, "m", paths(1))
    aspire(m, "m", paths(2))
    aspire(m, "m", paths(3))
    assert states(m) == {3: AVAILABLE, 2: END, 1: END}
    assert loads.log[-1] == ("close", "m", 1)


def test_manager_keeps_only_the_newest_unaspired_version_while_none_aspired_serves():
    """As TF Serving's policy: of several serving versions no longer aspired, all but the
    newest leave even while the aspired one is not AVAILABLE."""
    loads = Loads(failures={("m", 3): float("inf")})
    m = Manager(loads, max_load_retries=0)
    aspire(m, "m", paths(1, 2))
    aspire(m, "m", paths(3))
    assert states(m) == {3: END, 2: AVAILABLE, 1: END}


def test_manager_nothing_aspired_unloads_everything():
    loads = Loads()
    m = Manager(loads)
    aspire(m, "m", paths(1, 2))
    aspire(m, "m", {})
    assert states(m) == {2: END, 1: END}


def test_manager_retries_a_failed_load_up_to_max_load_retries():
    """Retries happen on later set_aspired_versions calls (the Source's polls) while the
    version stays aspired: 1 + max_load_retries attempts in all, then it gives up."""
    loads = Loads(failures={("m", 1): float("inf")})
    m = Manager(loads, max_load_retries=2, retry_interval=0)
    for _ in range(6):
        aspire(m, "m", paths(1))
    assert loads.attempts("m", 1) == 3
    [vs] = m.statuses("m")
    assert (vs.state, vs.failures, vs.error[0]) == (END, 3, Code.INTERNAL)


def test_manager_retry_that_succeeds_clears_the_error():
    loads = Loads(failures={("m", 1): 1})
    m = Manager(loads, max_load_retries=5, retry_interval=0)
    aspire(m, "m", paths(1))
    assert states(m) == {1: END}
    aspire(m, "m", paths(1))
    [vs] = m.statuses("m")
    assert (vs.state, vs.error, vs.failures) == (AVAILABLE, None, 1)
    assert m.handle("m").version == 1
    assert loads.attempts("m", 1) == 2


def test_manager_waits_retry_interval_between_attempts():
    loads = Loads(failures={("m", 1): float("inf")})
    m = Manager(loads, max_load_retries=5, retry_interval=0.05)
    aspire(m, "m", paths(1))
    aspire(m, "m", paths(1))  # too soon: no new attempt
    assert loads.attempts("m", 1) == 1
    retry_at = m.statuses("m")[0].retry_at
    wait_until(lambda: time.monotonic() >= retry_at, timeout=2)
    aspire(m, "m", paths(1))
    assert loads.attempts("m", 1) == 2


def test_manager_no_retries_with_max_load_retries_zero():
    loads = Loads(failures={("m", 1): 1})
    m = Manager(loads, max_load_retries=0, retry_interval=0)
    for _ in range(3):
        aspire(m, "m", paths(1))
    assert loads.attempts("m", 1) == 1 and states(m) == {1: END}


def test_manager_retain_models_unloads_and_forgets_the_others():
    loads = Loads()
    m = Manager(loads)
    aspire(m, "a", paths(1))
    aspire(m, "b", paths(1, 2))
    b_servables = [m.handle("b", version=v) for v in (1, 2)]
    m.retain_models({"a"})
    assert m.model_names() == ["a"]
    assert m.wait_idle(5)  # the unloads run on the unload thread
    assert all(s.closed for s in b_servables)
    assert ("close", "a", 1) not in loads.log and not m.handle("a").closed
    err = status_error(lambda: m.handle("b"))
    assert (err.code, err.message) == (Code.NOT_FOUND,
                                       "Servable not found for request: Latest(b)")


def test_manager_unload_all_closes_everything_but_keeps_the_models():
    m = Manager(Loads())
    aspire(m, "a", paths(1))
    aspire(m, "b", paths(1, 2))
    servables = [m.handle("a"), m.handle("b", version=1), m.handle("b", version=2)]
    m.unload_all()
    assert all(s.closed for s in servables)
    assert m.model_names() == ["a", "b"]
    assert states(m, "a") == {1: END} and states(m, "b") == {2: END, 1: END}
    assert all(vs.servable is None for vs in m.statuses("b"))
    assert status_error(lambda: m.handle("a")).code is Code.NOT_FOUND


class Held:
    """``during_load`` that holds the loads of the listed models until released."""

    def __init__(self, *names: str):
        self.names, self.entered, self.release = set(names), threading.Event(), threading.Event()

    def __call__(self, name: str, version: int) -> None:
        if name in self.names:
            self.entered.set()
            assert self.release.wait(10)


def test_manager_loads_on_a_loader_thread_in_order():
    """set_aspired_versions (a poll, a reload) only records: it returns while the load
    runs; with the default one loader thread, loads run one after another in order."""
    held = Held("a")
    loads = Loads(during_load=held)
    m = Manager(loads)
    try:
        m.set_aspired_versions("a", paths(1))
        m.set_aspired_versions("b", paths(1))
        assert held.entered.wait(5)
        assert states(m, "a") == {1: LOADING} and states(m, "b") == {1: LOADING}
        time.sleep(0.05)
        assert loads.log == [("load", "a", 1)]  # b waits its turn
    finally:
        held.release.set()
    assert m.wait_idle(5)
    assert loads.log == [("load", "a", 1), ("load", "b", 1)]
    assert states(m, "a") == {1: AVAILABLE} and states(m, "b") == {1: AVAILABLE}


def test_manager_num_load_threads_loads_models_side_by_side():
    held = Held("a")
    loads = Loads(during_load=held)
    m = Manager(loads, num_load_threads=2)
    try:
        m.set_aspired_versions("a", paths(1))
        assert held.entered.wait(5)
        m.set_aspired_versions("b", paths(1))
        wait_until(lambda: states(m, "b") == {1: AVAILABLE})
        assert states(m, "a") == {1: LOADING}
    finally:
        held.release.set()
    assert m.wait_idle(5) and states(m, "a") == {1: AVAILABLE}


def test_manager_load_timeout_fails_the_load_and_drops_what_it_made():
    held = Held("a")
    loads = Loads(during_load=held)
    m = Manager(loads, max_load_retries=0, load_timeout=0.2)
    try:
        m.set_aspired_versions("a", paths(1))
        wait_until(lambda: states(m, "a") == {1: END})
        [vs] = m.statuses("a")
        assert vs.error == (Code.DEADLINE_EXCEEDED, "load failed: not loaded within "
                            "--load_timeout_seconds=0.2; abandoned")
        assert vs.abandon.is_set()  # the loader's cue to stop where it can
        m.set_aspired_versions("b", paths(1))  # the loader thread is free again
        wait_until(lambda: states(m, "b") == {1: AVAILABLE})
    finally:
        held.release.set()
    wait_until(lambda: ("close", "a", 1) in loads.log)  # finished late: dropped
    assert states(m, "a") == {1: END} and m.statuses("a")[0].servable is None


# -- batching: merge and split -----------------------------------------------------------
def test_merge_inputs_concatenates_in_request_order():
    a = {"x": np.array([[1.0, 2.0]], np.float32), "ids": np.array([b"a"], object)}
    b = {"x": np.array([[3.0, 4.0], [5.0, 6.0]], np.float32),
         "ids": np.array([b"b", b"c"], object)}
    merged = batching.merge_inputs([a, b])
    assert set(merged) == {"x", "ids"}
    np.testing.assert_array_equal(merged["x"], [[1, 2], [3, 4], [5, 6]])
    assert merged["x"].dtype == np.float32
    assert list(merged["ids"]) == [b"a", b"b", b"c"]


def test_split_outputs_gives_each_request_its_rows():
    outputs = {"y": np.arange(12).reshape(6, 2), "z": np.arange(6) * 10}
    parts = batching.split_outputs(outputs, [1, 2, 3])
    assert [p["y"].shape for p in parts] == [(1, 2), (2, 2), (3, 2)]
    assert [list(p["z"]) for p in parts] == [[0], [10, 20], [30, 40, 50]]


def test_merge_then_split_round_trips():
    rng = np.random.default_rng(0)
    requests = [{"x": rng.standard_normal((n, 3, 2)).astype(np.float32)} for n in (2, 1, 4)]
    merged = batching.merge_inputs(requests)
    parts = batching.split_outputs({"y": merged["x"] * 2}, [2, 1, 4])
    for request, part in zip(requests, parts, strict=True):
        np.testing.assert_array_equal(part["y"], request["x"] * 2)


@pytest.mark.parametrize("outputs", [
    {"y": np.zeros((3, 2)), "total": np.array(5.0)},  # a scalar: no batch dimension
    {"y": np.zeros((4, 2))},  # rows do not add up
])
def test_split_outputs_refuses_outputs_without_the_batch_dimension(outputs):
    assert batching.split_outputs(outputs, [1, 2]) is None


def test_split_outputs_of_no_outputs():
    assert batching.split_outputs({}, [1, 2]) == [{}, {}]


# -- batching: which signatures ----------------------------------------------------------
def signature(*shapes: list[int] | None):
    """A SignatureDef with one float input per shape (None: unknown rank)."""
    sd = meta_graph_pb2.SignatureDef(method_name="tensorflow/serving/predict")
    for i, shape in enumerate(shapes):
        info = sd.inputs[f"in{i}"]
        info.name, info.dtype = f"in{i}:0", 1
        if shape is None:
            info.tensor_shape.unknown_rank = True
        else:
            for size in shape:
                info.tensor_shape.dim.add(size=size)
    return sd


@pytest.mark.parametrize("shapes, expected", [
    ([[-1, 224, 224, 3]], True),
    ([[-1]], True),
    ([[-1, 3], [-1]], True),
    ([[1, 224, 224, 3]], False),  # fixed batch of 1 (predict_images)
    ([[]], False),  # scalar
    ([None], False),  # unknown rank
    ([[-1, 3], [2]], False),  # one fixed input is enough to refuse
    ([], True),  # no inputs: nothing to refuse (vacuous)
])
def test_batchable(shapes: list, expected: bool):
    assert batchable(signature(*shapes)) is expected


# -- batching: the Batcher end to end ----------------------------------------------------
class ArrayServable:
    """Stands in for a Servable: ``call`` runs ``fn`` (pure numpy) and records the rows
    and thread of every call."""

    _count = 0

    def __init__(self, fn: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] | None
                 = None, signature_defs: dict | None = None):
        ArrayServable._count += 1
        self.name, self.version = f"fake{ArrayServable._count}", 1
        self.fn = fn or (lambda inputs: {"y": inputs["x"] * 2})
        self.signature_defs = signature_defs or {}
        self.calls: list[int] = []
        self.threads: list[str] = []
        self._lock = threading.Lock()

    def call(self, key: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._lock:
            self.calls.append(next(iter(inputs.values())).shape[0])
            self.threads.append(threading.current_thread().name)
        return self.fn(inputs)


class Metrics:
    def __init__(self) -> None:
        self.batches: list[tuple[int, int]] = []

    def observe_batch(self, servable, signature: str, rows: int, requests: int) -> None:
        self.batches.append((rows, requests))


def batch_threads(servable: ArrayServable) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(f"batch-{servable.name}-")]


@contextmanager
def running(servable: ArrayServable, metrics: Metrics | None = None,
            **options: int) -> Iterator[Batcher]:
    """A Batcher that is closed (and its threads gone) when the test ends."""
    batcher = Batcher(servable, "serving_default",
                      BatchOptions(**{"num_batch_threads": 1, **options}), metrics)
    try:
        yield batcher
    finally:
        batcher.close()
        wait_until(lambda: not batch_threads(servable))


def submit_all(batcher: Batcher, requests: list[dict[str, np.ndarray]]) -> list[object]:
    """Submit every request from its own thread at once; each result or StatusError."""
    results: list[object] = [None] * len(requests)
    barrier = threading.Barrier(len(requests))

    def one(i: int) -> None:
        barrier.wait()
        try:
            results[i] = batcher.submit(requests[i])
        except StatusError as exc:
            results[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not any(t.is_alive() for t in threads), "a caller never got an answer"
    return results


def rows(start: int, n: int, width: int = 2) -> dict[str, np.ndarray]:
    """Distinct values per request, so a caller given another's rows is caught."""
    return {"x": np.arange(start, start + n * width, dtype=np.float32).reshape(n, width)}


def test_batcher_merges_concurrent_requests_and_splits_results():
    """Four callers (7 rows) become one call; each gets exactly its own rows back."""
    servable, metrics = ArrayServable(), Metrics()
    requests = [rows(0, 1), rows(100, 2), rows(200, 3), rows(300, 1)]
    with running(servable, metrics, max_batch_size=7, batch_timeout_micros=5_000_000) as b:
        results = submit_all(b, requests)
    for request, result in zip(requests, results, strict=True):
        np.testing.assert_array_equal(result["y"], request["x"] * 2)
    assert servable.calls == [7] and metrics.batches == [(7, 4)]
    assert servable.threads[0].startswith(f"batch-{servable.name}-1-serving_default-")


def test_batcher_many_threads_each_get_their_own_rows():
    servable = ArrayServable()
    sizes = [1, 3, 2, 1, 2, 3, 1, 1, 2, 2, 1, 3, 1, 2, 1, 1]
    requests = [rows(1000 * i, n) for i, n in enumerate(sizes)]
    with running(servable, max_batch_size=8, batch_timeout_micros=2000,
                 num_batch_threads=2) as b:
        results = submit_all(b, requests)
    for request, result in zip(requests, results, strict=True):
        np.testing.assert_array_equal(result["y"], request["x"] * 2)
    assert sum(servable.calls) == sum(sizes)  # every row computed exactly once
    assert max(servable.calls) <= 8


def test_batcher_keeps_different_shapes_and_dtypes_apart():
    """Only requests with the same dtypes and non-batch dimensions are merged."""
    servable = ArrayServable()
    requests = [rows(0, 1), rows(10, 1, width=3),
                {"x": np.array([[7, 8]], np.int64)}, rows(20, 1)]
    with running(servable, max_batch_size=2, batch_timeout_micros=300_000) as b:
        results = submit_all(b, requests)
    for request, result in zip(requests, results, strict=True):
        np.testing.assert_array_equal(result["y"], request["x"] * 2)
        assert result["y"].dtype == request["x"].dtype
    assert sorted(servable.calls) == [1, 1, 2]


def test_batcher_falls_back_to_single_calls_when_merged_call_fails():
    def fn(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if inputs["x"].shape[0] > 1:
            raise StatusError(Code.INVALID_ARGUMENT, "this model takes one row at a time")
        return {"y": inputs["x"] * 2}

    servable = ArrayServable(fn)
    requests = [rows(0, 1), rows(10, 1), rows(20, 1)]
    with running(servable, max_batch_size=3, batch_timeout_micros=5_000_000) as b:
        results = submit_all(b, requests)
    for request, result in zip(requests, results, strict=True):
        np.testing.assert_array_equal(result["y"], request["x"] * 2)
    assert servable.calls == [3, 1, 1, 1]


def test_batcher_one_bad_request_does_not_fail_the_others():
    """The merged call fails because of one caller's input; re-run alone, only that
    caller gets the error."""
    def fn(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if (inputs["x"] < 0).any():
            raise StatusError(Code.INVALID_ARGUMENT, "negative input")
        return {"y": inputs["x"] * 2}

    servable = ArrayServable(fn)
    requests = [rows(0, 1), {"x": -np.ones((2, 2), np.float32)}, rows(10, 2)]
    with running(servable, max_batch_size=5, batch_timeout_micros=5_000_000) as b:
        good0, bad, good2 = submit_all(b, requests)
    np.testing.assert_array_equal(good0["y"], requests[0]["x"] * 2)
    np.testing.assert_array_equal(good2["y"], requests[2]["x"] * 2)
    assert isinstance(bad, StatusError)
    assert (bad.code, bad.message) == (Code.INVALID_ARGUMENT, "negative input")


def test_batcher_runs_alone_when_outputs_cannot_be_split():
    """An output without the batch dimension (a per-call total) cannot be split, so each
    request is run alone and gets its own total."""
    servable = ArrayServable(lambda inputs: {"y": inputs["x"] * 2,
                                             "total": np.array(inputs["x"].sum())})
    requests = [rows(0, 1), rows(10, 1)]
    with running(servable, max_batch_size=2, batch_timeout_micros=5_000_000) as b:
        results = submit_all(b, requests)
    for request, result in zip(requests, results, strict=True):
        assert float(result["total"]) == float(request["x"].sum())
    assert servable.calls == [2, 1, 1]


def test_batcher_unexpected_error_fails_the_batch_as_internal():
    """A non-StatusError from the servable is not retried per request: every caller of
    the batch gets INTERNAL (but none is left waiting)."""
    def fn(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise RuntimeError("boom")

    servable = ArrayServable(fn)
    with running(servable, max_batch_size=2, batch_timeout_micros=5_000_000) as b:
        results = submit_all(b, [rows(0, 1), rows(10, 1)])
    for result in results:
        assert isinstance(result, StatusError)
        # the client's text is fixed (issue 24); the exception is in the log
        assert (result.code, result.message) == (Code.INTERNAL, INTERNAL_MESSAGE)


def test_batcher_queue_full_is_unavailable():
    entered, release = threading.Event(), threading.Event()

    def fn(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        entered.set()
        assert release.wait(5)
        return {"y": inputs["x"] * 2}

    servable = ArrayServable(fn)
    with running(servable, max_batch_size=1, max_enqueued_batches=1) as b:
        results: list[object] = []
        first = threading.Thread(target=lambda: results.append(b.submit(rows(0, 1))))
        first.start()
        try:
            assert entered.wait(5)  # the batch thread is busy with the first request
            second = threading.Thread(target=lambda: results.append(b.submit(rows(10, 1))))
            second.start()
            wait_until(lambda: len(b._queue) == 1)  # the second waits in the queue
            err = status_error(lambda: b.submit(rows(20, 1)))
            assert (err.code, err.message) == (Code.UNAVAILABLE,
                                               "batch queue is full; retry later")
        finally:
            release.set()
            first.join(5)
        second.join(5)
    assert len(results) == 2 and servable.calls == [1, 1]


def test_batcher_bypass_runs_on_the_callers_thread():
    """Empty requests and anything after close() (requests still holding an unloaded
    servable) are run directly; a request larger than max_batch_size is refused, as
    tensorflow_model_server's batch queue refuses it."""
    servable = ArrayServable()
    me = threading.current_thread().name
    with running(servable, max_batch_size=2) as b:
        out = b.submit({"x": np.zeros((0, 2), np.float32)})
        assert out["y"].shape == (0, 2)
        err = status_error(lambda: b.submit(rows(0, 3)))
        assert (err.code, err.message) == (
            Code.INVALID_ARGUMENT, "Task size 3 is larger than maximum input batch size 2")
        assert servable.threads == [me]
        b.submit(rows(0, 1))
        assert servable.threads[-1].startswith("batch-")
        b.close()
        wait_until(lambda: not batch_threads(servable))
        np.testing.assert_array_equal(b.submit(rows(5, 1))["y"], rows(5, 1)["x"] * 2)
        assert servable.threads[-1] == me


def test_batch_options_from_proto():
    from tfdeploy.serving.config import batching_parameters

    defaults = BatchOptions.from_proto(None)
    assert (defaults.max_batch_size, defaults.batch_timeout_micros,
            defaults.max_enqueued_batches) == (1000, 0, 10)
    params = batching_parameters(None)
    params.max_batch_size.value, params.batch_timeout_micros.value = 32, 500
    options = BatchOptions.from_proto(params)
    assert (options.max_batch_size, options.batch_timeout_micros,
            options.max_enqueued_batches, options.num_batch_threads) == (
        32, 500, 10, defaults.num_batch_threads)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs an affinity call and two CPUs to tell them apart")
def test_num_batch_threads_defaults_to_the_cpus_the_process_may_use():
    """Unset in BatchingParameters, tensorflow_model_server takes MaxParallelism(): the
    CPUs of the process's affinity mask, not the machine's (a cpuset, ``taskset``)."""
    from tfdeploy.serving.config import batching_parameters

    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(allowed)})  # this thread only: the rest of pytest keeps its CPUs
    try:
        params = batching_parameters(None)
        params.max_batch_size.value = 8
        assert BatchOptions().num_batch_threads == 1
        assert BatchOptions.from_proto(params).num_batch_threads == 1
        params.num_batch_threads.value = 3  # set: taken as is
        assert BatchOptions.from_proto(params).num_batch_threads == 3
    finally:
        os.sched_setaffinity(0, allowed)


def test_make_batchers_only_for_batchable_signatures():
    from tfdeploy.serving.config import batching_parameters

    servable = ArrayServable(signature_defs={
        "serving_default": signature([-1, 8, 8, 3]),
        "predict_images": signature([1, 8, 8, 3]),
    })
    params = batching_parameters(None)
    params.max_batch_size.value, params.num_batch_threads.value = 4, 1
    batchers = make_batchers(servable, params)
    try:
        assert set(batchers) == {"serving_default"}
        b = batchers["serving_default"]
        assert (b.signature, b.options.max_batch_size, b.options.num_batch_threads) == (
            "serving_default", 4, 1)
        assert b.servable is servable and b.metrics is None
    finally:
        for b in batchers.values():
            b.close()
    wait_until(lambda: not batch_threads(servable))


def test_batcher_survives_picking_tasks_behind_another_shape():
    """Regression: the batch thread takes A1 and A2 from the queue [A1, B, A2]; removing A2
    must not compare it with B (``_Task`` used to compare by value, numpy arrays and all,
    which raised inside the batch thread, killed it and left every caller waiting)."""
    entered, release = threading.Event(), threading.Event()

    def fn(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not entered.is_set():
            entered.set()
            assert release.wait(5)
        return {"y": inputs["x"] * 2}

    servable = ArrayServable(fn)
    requests = [rows(0, 1), rows(10, 2), rows(20, 1, width=3), rows(30, 2)]
    results: list[object] = [None] * len(requests)

    def one(i: int) -> None:
        results[i] = batcher.submit(requests[i])

    with running(servable, max_batch_size=4) as batcher:
        threads = [threading.Thread(target=one, args=(i,), daemon=True)
                   for i in range(len(requests))]
        threads[0].start()
        try:
            assert entered.wait(5)  # the batch thread is busy; queue the rest in order
            for n, t in enumerate(threads[1:], start=1):
                t.start()
                wait_until(lambda n=n: len(batcher._queue) == n)
        finally:
            release.set()
        deadline = time.monotonic() + 5
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        assert not any(t.is_alive() for t in threads), "the batch thread died"
    for request, result in zip(requests, results, strict=True):
        np.testing.assert_array_equal(result["y"], request["x"] * 2)
    assert servable.calls == [1, 4, 1]


def test_batcher_pads_batches_up_to_the_next_allowed_size():
    """allowed_batch_sizes: 3 rows run as 4 (the last request's first row repeated), 1 row
    as 2; the padding never reaches a caller, and the metric sees the size that ran."""
    servable, metrics = ArrayServable(), Metrics()
    requests = [rows(0, 1), rows(100, 2)]
    with running(servable, metrics, max_batch_size=8, allowed_batch_sizes=(2, 4, 8),
                 batch_timeout_micros=5_000_000) as b:
        results = submit_all(b, requests)
        alone = b.submit(rows(500, 1))
    for request, result in zip(requests, results, strict=True):
        np.testing.assert_array_equal(result["y"], request["x"] * 2)
    np.testing.assert_array_equal(alone["y"], rows(500, 1)["x"] * 2)
    assert servable.calls == [4, 2] and metrics.batches == [(4, 2), (2, 1)]


def test_merge_inputs_pads_rows_and_variable_lengths_as_tf_serving():
    a = {"x": np.array([[1, 2]], np.int32)}
    b = {"x": np.array([[5, 6, 7], [8, 9, 10]], np.int32)}
    merged = batching.merge_inputs([a, b], padding=1, pad_variable_length=True)
    # each padded with its own first element; the padding row is the last request's first
    np.testing.assert_array_equal(merged["x"], [[1, 2, 1], [5, 6, 7], [8, 9, 10], [5, 6, 7]])
    words = {"s": np.array([[b"a"]], object)}
    longer = {"s": np.array([[b"b", b"c"]], object)}
    assert batching.merge_inputs([words, longer], pad_variable_length=True)["s"].tolist() == [
        [b"a", b"a"], [b"b", b"c"]]
    assert BatchOptions(allowed_batch_sizes=(2, 4)).padded_size(5) == 5  # none holds it


def test_batcher_pad_variable_length_inputs_merges_different_widths():
    servable = ArrayServable()
    requests = [rows(0, 1, width=2), rows(10, 1, width=3)]
    with running(servable, max_batch_size=2, batch_timeout_micros=5_000_000,
                 pad_variable_length_inputs=True) as b:
        results = submit_all(b, requests)
    assert servable.calls == [2]
    by_width = sorted(results, key=lambda r: r["y"].shape[1])
    # tensorflow_model_server answers on the padded inputs: the narrow request's row is
    # padded with its first element to the batch's width
    np.testing.assert_array_equal(by_width[0]["y"], [[0, 2, 0]])
    np.testing.assert_array_equal(by_width[1]["y"], rows(10, 1, width=3)["x"] * 2)


def test_batcher_splits_large_requests_when_splitting_is_enabled():
    servable, metrics = ArrayServable(), Metrics()
    big = rows(0, 7)
    with running(servable, metrics, max_batch_size=8, enable_large_batch_splitting=True,
                 max_execution_batch_size=3) as b:
        out = b.submit(big)
    np.testing.assert_array_equal(out["y"], big["x"] * 2)
    assert max(servable.calls) <= 3 and sum(servable.calls) == 7
    with running(ArrayServable(), max_batch_size=8) as b:  # without: one batch of 7
        b.submit(big)
        assert b.servable.calls == [7]


def test_batcher_split_pieces_fill_the_open_batch_first():
    """As tensorflow_model_server splits: the first piece fills what the open batch has
    left, the rest go in pieces of max_execution_batch_size."""
    servable = ArrayServable()
    with running(servable, max_batch_size=8, enable_large_batch_splitting=True,
                 max_execution_batch_size=3) as b:
        b.close()
        wait_until(lambda: not batch_threads(servable))
        key = b._key(rows(0, 1))
        assert b._pieces(7, key) == [(0, 3), (3, 6), (6, 7)]
        assert b._pieces(3, key) == [(0, 3)]
        b._queue.append(batching._Task(rows(0, 1), 1, key))  # an open batch holding 1 row
        assert b._pieces(7, key) == [(0, 2), (2, 5), (5, 7)]
        assert b._pieces(2, key) == [(0, 2)]


@pytest.mark.parametrize("text, message", [
    ("max_batch_size { value: 8 } allowed_batch_sizes: [2, 4]",
     "Last entry in allowed_batch_sizes must match max_batch_size; last entry was 4; "
     "expected 8"),
    ("allowed_batch_sizes: [2, 4]",
     "Last entry in allowed_batch_sizes must match max_batch_size; last entry was 4; "
     "expected 1000"),
    ("max_batch_size { value: 4 } enable_large_batch_splitting { value: true } "
     "max_execution_batch_size { value: 8 }",
     "When enable_large_batch_splitting is true, input_batch_size_limit must be greater "
     "than or equal to max_execution_batch_size.148"),
    ("num_batch_threads { value: 0 }", "num_batch_threads must be positive; was 0"),
    ("batch_timeout_micros { value: -1 }", "batch_timeout_micros must be non-negative; was -1"),
    ("max_enqueued_batches { value: 0 } enable_large_batch_splitting { value: true }",
     "max_enqueued_batches must be positive; was 0"),
])
def test_batch_options_refuses_what_tf_serving_refuses(text, message, tmp_path):
    from tfdeploy.serving.config import batching_parameters

    path = tmp_path / "batching.config"
    path.write_text(text)
    err = status_error(lambda: BatchOptions.from_proto(batching_parameters(path)))
    assert (err.code, err.message) == (Code.INVALID_ARGUMENT, message)


def test_batch_options_read_the_four_fields(tmp_path):
    from tfdeploy.serving.config import batching_parameters

    path = tmp_path / "batching.config"
    path.write_text("max_batch_size { value: 8 } allowed_batch_sizes: [2, 8] "
                    "pad_variable_length_inputs: true "
                    "enable_large_batch_splitting { value: true } "
                    "max_execution_batch_size { value: 2 }")
    options = BatchOptions.from_proto(batching_parameters(path))
    assert (options.allowed_batch_sizes, options.pad_variable_length_inputs,
            options.enable_large_batch_splitting, options.execution_limit) == (
        (2, 8), True, True, 2)
    rewritten = BatchOptions(max_enqueued_batches=0)
    rewritten.validate()  # without splitting TF Serving takes 0 as 1
    assert rewritten.max_enqueued_batches == 1


# -- admission: slots, the pixel budget, the queue bound, deadlines ------------------------
def test_timeout_bucket_rounds_down_to_four_steps_per_doubling():
    from tfdeploy.serving.path import timeout_bucket

    seen = set()
    for ms in range(1, 200_000, 7):
        b = timeout_bucket(ms)
        assert 0 < b <= ms and b > ms * 0.75
        seen.add(b)
    assert len(seen) < 60


def _call(api: str = "grpc", seconds: float | None = None):
    from tfdeploy.serving.path import Call, deadline_in

    return Call("predict", api, "m", deadline=deadline_in(seconds))


def test_admission_queues_on_the_budget_in_arrival_order():
    from tfdeploy.serving.path import Admission

    admission = Admission({"grpc": 4, "rest": 4}, max_queued=8, budget=100)
    first = admission.enter(_call(), 60)
    order: list[str] = []

    def enter(name: str, cost: int) -> None:
        ticket = admission.enter(_call(), cost)
        order.append(name)
        time.sleep(0.05)
        admission.leave(ticket)

    big = threading.Thread(target=enter, args=("big", 90))
    big.start()
    time.sleep(0.2)
    small = threading.Thread(target=enter, args=("small", 10))  # fits, but big came first
    small.start()
    time.sleep(0.2)
    assert order == [] and admission.snapshot()["waiting"] == 2
    admission.leave(first)
    big.join(5)
    small.join(5)
    assert order == ["big", "small"]
    # a request over the whole budget runs alone
    alone = admission.enter(_call(), 1000)
    admission.leave(alone)


def test_admission_refuses_a_full_queue_and_an_expired_wait():
    from tfdeploy.serving.path import Admission

    admission = Admission({"grpc": 1, "rest": 1}, max_queued=1, budget=100)
    held = admission.enter(_call(), 1)
    waiter = threading.Thread(target=lambda: _expect(admission, 2.0, Code.DEADLINE_EXCEEDED))
    waiter.start()
    time.sleep(0.2)
    with pytest.raises(StatusError) as err:
        admission.enter(_call(), 1)
    assert err.value.code == Code.UNAVAILABLE and "--max_queued_requests" in err.value.message
    rest = admission.enter(_call("rest"), 1)  # the other front end has its own slots
    admission.leave(rest)
    waiter.join(5)
    _expect(admission, 0.2, Code.DEADLINE_EXCEEDED)
    admission.leave(held)
    assert admission.snapshot() == {"running": {"grpc": 0, "rest": 0}, "in_flight": 0,
                                    "waiting": 0}


def _expect(admission, seconds: float, code: Code) -> None:
    with pytest.raises(StatusError) as err:
        admission.enter(_call(seconds=seconds), 1)
    assert err.value.code == code


@pytest.mark.parametrize("target,uri", [
    ("/v1/models/m?x=1#f", "/v1/models/m?x=1#f"),  # as sent, nothing decoded
    ("/v1/models/a%2Fb?q=%zz", None),  # "%" without two hex digits, even in the query
    ("/v1/models/m?a?b#c?d", "/v1/models/m?a?b#c?d"),  # "?" in query and fragment
    ("/v1/models/m#a#b", None),
    ("/v1/models/{m}", None),
    ("http://h:8501/v1/models/m?x", "/v1/models/m?x"),  # absolute-form: path on
    ("http://user@[::1]:8501/v1/models/m", "/v1/models/m"),
    ("http://[::g]/v1/models/m", None),
    ("http://h:65536/v1/models/m", None),
    ("//h/v1/models/m", "/v1/models/m"),  # "//" starts an authority
    ("http://h", ""),
    ("1a:b/v1", None),  # a first segment with ":" is no relative path
    ("*", "*"),
])
def test_uri_path_is_what_tensorflow_model_servers_http_server_hands_on(target, uri):
    from tfdeploy.serving.rest_api import uri_path

    assert uri_path(target) == uri
