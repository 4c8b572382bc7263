"""Fast unit tests of the client's endpoint policy: address parsing, round robin,
cool-down and retries.  The transports here are in-memory implementations of the
Transport interface that answer from a script, so the policy is tested without sockets
(the real transports are tested over loopback in test_client.py)."""

from __future__ import annotations

from concurrent.futures import Future

import pytest

from tfdeploy.client.base import ClientError, Transport
from tfdeploy.client.pool import EndpointPool, Endpoints, connect, parse_addresses


class Scripted(Transport):
    """Answers each call with the next item of ``script`` (an exception is raised)."""

    name = "grpc"

    def __init__(self, address: str, script: list):
        self.address, self.script, self.calls = address, list(script), 0

    def _next(self):
        self.calls += 1
        item = self.script.pop(0) if self.script else "ok"
        if isinstance(item, Exception):
            raise item
        return item

    def metadata(self, model, version=None):
        return self._next()

    def status(self, model, version=None):
        return self._next()

    def predict(self, model, signature, inputs, version=None, outputs=None,
                output_dtypes=None):
        return {"address": self.address, "value": self._next()}

    def predict_png(self, model, image, version=None, signature="serving_default"):
        return self._next()


def unavailable(address="a"):
    return ClientError("UNAVAILABLE", "down", address)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_parse_addresses():
    assert parse_addresses(["h1,h2:9000", " ", "[::1]:7", "[::1]"], "grpc") == [
        "h1:8500", "h2:9000", "[::1]:7", "[::1]:8500"]
    assert parse_addresses(["host"], "rest") == ["host:8501"]
    assert parse_addresses([], "grpc") == []


def test_connect_builds_one_transport_per_address():
    pool = connect("127.0.0.1:1,127.0.0.1:1,127.0.0.1:2", "rest", timeout=1)
    assert pool.name == "rest" and pool.addresses == ["127.0.0.1:1", "127.0.0.1:2"]
    with pytest.raises(ValueError, match="transport must be"):
        connect("x", "http")


def test_round_robin_and_cooldown():
    clock = Clock()
    ep = Endpoints(["a", "b", "c"], cooldown=5, clock=clock)
    assert [ep.pick() for _ in range(4)] == ["a", "b", "c", "a"]
    ep.mark_down("b")
    assert [ep.pick() for _ in range(3)] == ["c", "a", "c"]
    clock.now += 5.1
    assert "b" in {ep.pick() for _ in range(3)}
    for address in ("a", "b", "c"):
        ep.mark_down(address)
    assert ep.pick() in {"a", "b", "c"}  # all down: still tries one


def test_cooldown_doubles_while_failing_and_resets_on_success():
    clock = Clock()
    ep = Endpoints(["a", "b"], cooldown=5, max_cooldown=12, clock=clock)
    for expected in (5, 10, 12):
        ep.mark_down("a")
        assert ep.pick() == "b" and ep.pick() == "b"
        clock.now += expected - 0.1
        assert ep.pick() == "b"
        clock.now += 0.2
    ep.served("a")
    ep.mark_down("a")
    clock.now += 5.1
    assert "a" in {ep.pick(), ep.pick()}


def test_all_down_picks_the_one_back_soonest():
    clock = Clock()
    ep = Endpoints(["a", "b"], cooldown=5, clock=clock)
    ep.mark_down("a")
    ep.mark_down("a")  # 10 s
    ep.mark_down("b")  # 5 s
    assert not ep.any_up() and ep.pick() == "b"


def test_single_endpoint_is_never_marked_down():
    clock = Clock()
    ep = Endpoints(["a"], clock=clock)
    ep.mark_down("a")
    assert ep.pick() == "a"


def test_retry_with_backoff_on_one_endpoint():
    sleeps: list[float] = []
    t = Scripted("a", [unavailable(), ClientError("CANCELLED", "stopping"), "fine"])
    pool = EndpointPool({"a": t}, retries=4, backoff=0.2, sleep=sleeps.append)
    assert pool.predict("m", "s", {})["value"] == "fine"
    assert sleeps == [0.2, 0.4] and t.calls == 3 and pool.counts == {"a": 1}


def test_retry_budget_is_bounded():
    sleeps: list[float] = []
    t = Scripted("a", [unavailable()] * 10)
    pool = EndpointPool({"a": t}, retries=2, sleep=sleeps.append)
    with pytest.raises(ClientError) as info:
        pool.metadata("m")
    assert info.value.code == "UNAVAILABLE" and t.calls == 3 and len(sleeps) == 2


def test_retry_timeout_bounds_the_time_spent():
    clock = Clock()

    def sleep(seconds: float) -> None:
        clock.now += seconds

    t = Scripted("a", [unavailable()] * 100)
    pool = EndpointPool({"a": t}, retries=100, retry_timeout=10, backoff=0.5,
                        max_backoff=2, sleep=sleep, clock=clock)
    with pytest.raises(ClientError, match=r"gave up after \d+ attempts"):
        pool.predict("m", "s", {})
    assert clock.now - 100 <= 10  # 0.5 + 1 + 2 + 2 + 2 + 2 = 9.5, then the next would pass
    assert t.calls == 7


def test_a_restart_shorter_than_the_budget_is_outlasted():
    """The default budget rides out a server that is down for 10 s."""
    clock = Clock()

    class Restarting(Scripted):
        def _next(self):
            self.calls += 1
            if clock.now < 110:
                raise unavailable()
            return "back"

    def sleep(seconds: float) -> None:
        clock.now += seconds

    pool = EndpointPool({"a": Restarting("a", [])}, sleep=sleep, clock=clock)
    assert pool.predict("m", "s", {})["value"] == "back"


def test_deadline_exceeded_fails_over():
    hung = Scripted("a", [ClientError("DEADLINE_EXCEEDED", "Deadline Exceeded", "a")])
    pool = EndpointPool({"a": hung, "b": Scripted("b", [])},
                        sleep=lambda s: pytest.fail("slept"))
    assert pool.metadata("m") == "ok" and pool.counts == {"a": 0, "b": 1}


def test_non_retryable_errors_are_not_retried():
    t = Scripted("a", [ClientError("INVALID_ARGUMENT", "bad image")])
    pool = EndpointPool({"a": t}, sleep=lambda s: pytest.fail("slept"))
    with pytest.raises(ClientError, match="bad image"):
        pool.predict_png("m", b"x")
    assert t.calls == 1


def test_failover_to_the_next_endpoint_without_sleeping():
    a, b = Scripted("a", [unavailable("a")] * 3), Scripted("b", [])
    pool = EndpointPool({"a": a, "b": b}, retries=1, sleep=lambda s: pytest.fail("slept"))
    results = [pool.predict("m", "s", {})["address"] for _ in range(4)]
    assert results == ["b"] * 4  # a failed once, then sat out its cool-down
    assert a.calls == 1 and pool.counts == {"a": 0, "b": 4}


def test_predict_async_retries_through_the_pool():
    a = Scripted("a", [unavailable("a")])
    pool = EndpointPool({"a": a}, sleep=lambda s: None)
    future = pool.predict_async("m", "s", {})
    assert isinstance(future, Future) and future.result(timeout=5)["value"] == "ok"
    bad = Scripted("b", [ClientError("NOT_FOUND", "no model")])
    with pytest.raises(ClientError, match="no model"):
        EndpointPool({"b": bad}).predict_async("m", "s", {}).result(timeout=5)


def test_client_error_text_and_code():
    exc = ClientError("NOT_FOUND", "Servable not found", "h:1")
    assert str(exc) == "NOT_FOUND: Servable not found" and exc.endpoint == "h:1"
    assert exc.code.http == 404 and not exc.code.retryable


def test_a_transport_can_mark_an_error_final():
    """A port speaking the other protocol answers UNAVAILABLE, but retrying cannot help."""
    wrong = ClientError("UNAVAILABLE", "Failed parsing HTTP/2", "a", retryable=False)
    t = Scripted("a", [wrong, "never reached"])
    pool = EndpointPool({"a": t}, sleep=lambda s: pytest.fail("slept"))
    with pytest.raises(ClientError, match="HTTP/2"):
        pool.status("m")
    assert t.calls == 1 and ClientError("UNAVAILABLE", "x").retryable


def refused(address="a"):
    return ClientError("UNAVAILABLE", "Connection refused", address, refused=True)


def test_refused_before_any_answer_fails_at_once():
    """Nothing listens: say so now (the CLI adds `tfdeploy serve`), no 17 s of backoff."""
    t = Scripted("a", [refused()] * 5)
    pool = EndpointPool({"a": t}, sleep=lambda s: pytest.fail("slept"))
    with pytest.raises(ClientError, match="refused"):
        pool.metadata("m")
    assert t.calls == 1
    a, b = Scripted("a", [refused("a")] * 5), Scripted("b", [refused("b")] * 5)
    pool = EndpointPool({"a": a, "b": b}, sleep=lambda s: None)
    with pytest.raises(ClientError, match="refused"):
        pool.metadata("m")
    assert a.calls >= 1 and b.calls >= 1  # every endpoint was tried first


def test_refused_after_an_answer_is_a_restart_and_retried():
    sleeps: list[float] = []
    t = Scripted("a", ["meta", refused(), refused(), "again"])
    pool = EndpointPool({"a": t}, sleep=sleeps.append)
    assert pool.metadata("m") == "meta"
    assert pool.status("m") == "again" and len(sleeps) == 2


def test_connection_problems_are_named_without_cli_flags():
    """The library says what is wrong (the CLI adds which flag fixes it): a Python caller
    is not told to use ``--transport``."""
    from tfdeploy.client.predict import connection_problem

    cases = [
        (ClientError("UNAVAILABLE", "Trying to connect an http1.x server (HTTP/2 frame)"),
         "grpc", "wrong_transport"),
        (ClientError("UNAVAILABLE", "cannot reach a: HTTP/1.1 parse error"), "rest",
         "wrong_transport"),
        (refused(), "grpc", "no_server"),
        (refused(), "rest", "no_server"),
    ]
    for exc, transport, cause in cases:
        got = connection_problem(exc, transport)
        assert got is not None and got[0] == cause, (exc, got)
        assert "--" not in got[1]
    assert connection_problem(ClientError("NOT_FOUND", "Connection refused"), "grpc") is None
    assert connection_problem(ClientError("UNAVAILABLE", "socket closed"), "grpc") is None


def test_a_long_first_attempt_still_fails_over():
    """The retry budget counts retries: a request that ran longer than it before its
    server went away (a replica stopped under it) is still sent to the other endpoint."""
    clock = Clock()

    class Slow(Scripted):
        def _next(self):
            clock.now += 40  # longer than the whole retry budget
            return super()._next()

    a, b = Slow("a", [unavailable("a")]), Scripted("b", [])
    pool = EndpointPool({"a": a, "b": b}, retry_timeout=30, clock=clock,
                        sleep=lambda s: pytest.fail("slept"))
    assert pool.predict_png("m", b"x") == "ok" and pool.counts == {"a": 0, "b": 1}
