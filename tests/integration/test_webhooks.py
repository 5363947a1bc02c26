"""Signed webhooks end to end: a real worker POSTs to a real HTTP receiver in this process.

The receivers listen on 127.0.0.1, which the SSRF guard refuses by default; the tests that
need them restart the stack's API and worker with CONVEYOR_ALLOW_PRIVATE_NETWORKS=true (and
a fast retry schedule), and the module puts the stack back as it found it.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
import standardwebhooks

from conveyor.core import db
from conveyor.core.models import WebhookEndpoint
from conveyor.core.netguard import BlockedDestination, GuardedBackend, NetPolicy, guarded_client
from conveyor.webhooks import service
from conveyor.webhooks.delivery import DISPATCH_GRACE_SECONDS, Claim, dispatch_due, send
from conveyor.webhooks.signing import generate_secret, verify
from tests.integration.conftest import Process, Stack, submit_diagnostics, wait_for

ALLOW = "CONVEYOR_ALLOW_PRIVATE_NETWORKS"
# Retries for longer than the failure window, so an outage ends with the endpoint disabled
# and its events held, never with a delivery out of attempts.
WINDOW_SECONDS = 3
FAST = {
    "CONVEYOR_WEBHOOK_RETRY_SCHEDULE": "1,1,1,1,1",
    "CONVEYOR_WEBHOOK_DISABLE_AFTER_SECONDS": str(WINDOW_SECONDS),
}
ENDPOINTS = "/api/v1/webhook-endpoints"


# --- a receiver ------------------------------------------------------------------------


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


class Receiver:
    """An HTTP server answering from a plan of status codes, then `default`."""

    def __init__(self, plan: list[int] | None = None, default: int = 200, location: str = ""):
        self.plan = list(plan or [])
        self.default = default
        self.location = location
        self.requests: list[Received] = []
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.listening = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def go_down(self) -> None:
        """Stop listening: connections are refused, as from a crashed receiver."""
        self.server.shutdown()
        self.server.server_close()
        self.listening = False

    def come_back(self) -> None:
        """Listen again on the same port."""
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self.listening = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                with receiver._lock:
                    headers = {name.lower(): value for name, value in self.headers.items()}
                    receiver.requests.append(Received(self.path, headers, body))
                    code = receiver.plan.pop(0) if receiver.plan else receiver.default
                reply = b"ok" if code < 300 else f"failing with {code}".encode()
                self.send_response(code)
                if 300 <= code < 400:
                    self.send_header("location", receiver.location)
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            do_GET = do_POST = _answer

            def log_message(self, *args: Any) -> None:
                pass

        return Handler

    def wait(self, count: int, timeout: float = 30) -> list[Received]:
        wait_for(lambda: len(self.requests) >= count, timeout, f"{count} request(s) at receiver")
        return list(self.requests)

    def close(self) -> None:
        if self.listening:
            self.go_down()


@pytest.fixture
def receivers() -> Iterator[Callable[..., Receiver]]:
    started: list[Receiver] = []

    def start(*args: Any, **kwargs: Any) -> Receiver:
        started.append(Receiver(*args, **kwargs))
        return started[-1]

    yield start
    for receiver in started:
        receiver.close()


# --- the stack, reconfigured -------------------------------------------------------------


def _restart(stack: Stack) -> None:
    stack.worker.stop()
    stack.api.stop()
    stack.api = Process("api", stack.api.argv, stack.env, stack.api.log_path)
    stack.api.start()

    def api_up() -> bool:
        try:
            return httpx.get(f"{stack.api_url}/health/live", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(api_up, 30, "the API to restart")
    stack.start_worker()


def configure(stack: Stack, *, allow_private: bool) -> None:
    """Restart the API and worker if their SSRF setting is not the one wanted."""
    if (stack.env.get(ALLOW) == "true") == allow_private:
        return
    if allow_private:
        stack.env.update({ALLOW: "true", **FAST})
    else:
        stack.env[ALLOW] = "false"
    _restart(stack)


@pytest.fixture(scope="module")
def hooks(stack: Stack) -> Iterator[Stack]:
    yield stack
    if any(name in stack.env for name in (ALLOW, *FAST)):
        for name in (ALLOW, *FAST):
            stack.env.pop(name, None)
        _restart(stack)


@pytest.fixture
def api(hooks: Stack) -> Iterator[httpx.Client]:
    """The admin client; endpoints made through it are deleted afterwards, so late retries
    of this test's deliveries cannot reach a later test's receiver."""
    with hooks.client() as client:
        yield client
        for endpoint in client.get(ENDPOINTS).json()["items"]:
            client.delete(f"{ENDPOINTS}/{endpoint['id']}")


def register(client: httpx.Client, url: str, events: list[str]) -> dict[str, Any]:
    response = client.post(ENDPOINTS, json={"url": url, "events": events})
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def deliveries_when(
    client: httpx.Client, endpoint_id: str, done: Callable[[list[dict[str, Any]]], bool]
) -> list[dict[str, Any]]:
    def check() -> list[dict[str, Any]] | None:
        items: list[dict[str, Any]] = client.get(f"{ENDPOINTS}/{endpoint_id}/deliveries").json()[
            "items"
        ]
        return items if items and done(items) else None

    result: list[dict[str, Any]] = wait_for(check, 30, "deliveries to settle", interval=0.2)
    return result


# --- SSRF with the default policy -------------------------------------------------------


def test_private_destinations_are_refused(
    hooks: Stack, api: httpx.Client, receivers: Callable[..., Receiver]
) -> None:
    configure(hooks, allow_private=False)
    receiver = receivers()
    refused = [
        receiver.url,
        f"http://localhost:{receiver.port}/hook",
        "http://169.254.169.254/latest/meta-data/",
        f"http://[::ffff:127.0.0.1]:{receiver.port}/",
        "http://10.0.0.8/",
    ]
    for url in refused:
        response = api.post(ENDPOINTS, json={"url": url, "events": ["job.succeeded"]})
        assert response.status_code == 422, url
        assert "refused" in response.json()["detail"]
    response = api.post(ENDPOINTS, json={"url": "ftp://example.com/", "events": ["job.dead"]})
    assert response.status_code == 422
    assert "scheme" in response.json()["detail"]
    response = api.post(ENDPOINTS, json={"url": "https://93.184.216.34/", "events": ["job.nope"]})
    assert response.status_code == 422
    assert "unknown event type" in response.json()["detail"]

    # Endpoints that passed the check once (their DNS changed since): refused when sent.
    with db.session_scope() as session:
        planted = []
        for url in (f"http://localhost:{receiver.port}/hook", "http://169.254.169.254/"):
            endpoint = WebhookEndpoint(
                id=uuid.uuid4().hex,
                owner="ops",
                url=url,
                events=["job.succeeded"],
                secret=generate_secret(),
                enabled=True,
                consecutive_failures=0,
            )
            session.add(endpoint)
            session.flush()
            service.send_test(session, endpoint)
            planted.append(endpoint.id)
    for endpoint_id in planted:
        (delivery,) = deliveries_when(api, endpoint_id, lambda d: bool(d[0]["attempt_log"]))
        first = delivery["attempt_log"][0]
        assert first["status_code"] is None
        assert "refused" in first["error"]
    assert receiver.requests == []
    log = hooks.worker.log_path.read_text(errors="replace")
    assert "netguard.refused" in log
    assert "localhost" in log


# --- delivery -----------------------------------------------------------------------------


def test_job_outcome_is_delivered_signed(
    hooks: Stack, api: httpx.Client, receivers: Callable[..., Receiver]
) -> None:
    configure(hooks, allow_private=True)
    receiver = receivers()
    created = register(api, receiver.url, ["job.succeeded"])
    secret = created["secret"]
    assert secret.startswith("whsec_")
    shown = api.get(f"{ENDPOINTS}/{created['id']}").json()
    assert "secret" not in shown
    assert shown["enabled"] is True

    # Another owner sees nothing of it.
    with hooks.client(hooks.key_for("globex")) as other:
        assert other.get(f"{ENDPOINTS}/{created['id']}").status_code == 404
        assert (
            other.patch(f"{ENDPOINTS}/{created['id']}", json={"enabled": False}).status_code == 404
        )
        assert other.delete(f"{ENDPOINTS}/{created['id']}").status_code == 404
        assert other.get(ENDPOINTS).json()["items"] == []

    job_id = submit_diagnostics(api, steps=1, step_seconds=0)
    (request,) = receiver.wait(1)
    payload = standardwebhooks.Webhook(secret).verify(request.body, request.headers)
    verify(secret, request.headers, request.body)
    assert payload["type"] == "job.succeeded"
    assert payload["data"]["id"] == job_id
    assert payload["data"]["state"] == "succeeded"
    assert "kwargs" not in payload["data"]
    assert request.headers["content-type"] == "application/json"

    (delivery,) = deliveries_when(api, created["id"], lambda d: d[0]["status"] == "succeeded")
    assert delivery["id"] == request.headers["webhook-id"]
    assert delivery["attempts"] == 1
    assert delivery["attempt_log"][0]["status_code"] == 200
    # Deliveries keep their own log: no job rows for the delivery tasks.
    assert api.get("/api/v1/jobs", params={"queue": "webhooks"}).json()["items"] == []


def test_failing_receiver_gets_the_event_once_it_recovers(
    hooks: Stack, api: httpx.Client, receivers: Callable[..., Receiver]
) -> None:
    configure(hooks, allow_private=True)
    receiver = receivers(plan=[500, 503])
    created = register(api, receiver.url, ["job.dead"])
    sent = api.post(f"{ENDPOINTS}/{created['id']}/test")
    assert sent.status_code == 202, sent.text

    requests = receiver.wait(3)
    assert {r.headers["webhook-id"] for r in requests} == {sent.json()["delivery_id"]}
    for request in requests:  # every attempt is signed afresh
        payload = standardwebhooks.Webhook(created["secret"]).verify(request.body, request.headers)
        assert payload["type"] == "webhook.test"

    (delivery,) = deliveries_when(api, created["id"], lambda d: d[0]["status"] == "succeeded")
    log = delivery["attempt_log"]
    assert [a["status_code"] for a in log] == [500, 503, 200]
    assert [a["error"] for a in log] == ["HTTP 500", "HTTP 503", None]
    assert log[0]["response_excerpt"] == "failing with 500"
    assert all(a["duration_ms"] >= 0 for a in log)
    assert api.get(f"{ENDPOINTS}/{created['id']}").json()["consecutive_failures"] == 0


def test_endpoint_that_keeps_failing_is_disabled(
    hooks: Stack, api: httpx.Client, receivers: Callable[..., Receiver]
) -> None:
    configure(hooks, allow_private=True)
    failing = receivers(default=500)
    watcher = receivers()
    broken = register(api, failing.url, ["job.succeeded"])
    watching = register(api, watcher.url, ["endpoint.disabled"])
    assert api.post(f"{ENDPOINTS}/{broken['id']}/test").status_code == 202

    (notice,) = watcher.wait(1, timeout=WINDOW_SECONDS + 30)
    payload = standardwebhooks.Webhook(watching["secret"]).verify(notice.body, notice.headers)
    assert payload["type"] == "endpoint.disabled"
    assert payload["data"]["endpoint_id"] == broken["id"]
    assert payload["data"]["failing_since"] is not None
    # Retries 1 s apart, so the window of FAST ends at the fourth attempt at the latest.
    tried = len(failing.requests)
    assert 2 <= tried <= 4

    shown = api.get(f"{ENDPOINTS}/{broken['id']}").json()
    assert shown["enabled"] is False
    assert "every delivery failed for" in shown["disabled_reason"]
    assert shown["failing_since"] == payload["data"]["failing_since"]
    # Held, not failed: it goes out again once the endpoint is re-enabled.
    (delivery,) = api.get(f"{ENDPOINTS}/{broken['id']}/deliveries").json()["items"]
    assert (delivery["status"], delivery["attempts"]) == ("paused", tried)
    assert api.post(f"{ENDPOINTS}/{broken['id']}/test").status_code == 409
    assert "webhooks.endpoint_disabled" in hooks.worker.log_path.read_text(errors="replace")

    enabled = api.patch(f"{ENDPOINTS}/{broken['id']}", json={"enabled": True}).json()
    assert (enabled["enabled"], enabled["consecutive_failures"]) == (True, 0)
    assert (enabled["disabled_reason"], enabled["failing_since"]) == (None, None)
    again = failing.wait(tried + 1)[tried]
    assert again.headers["webhook-id"] == delivery["id"]


def test_receiver_down_under_traffic_gets_every_event_exactly_once(
    hooks: Stack, api: httpx.Client, receivers: Callable[..., Receiver]
) -> None:
    """The outage of the bug report: events keep coming while the receiver is down, longer
    than the failure window. The endpoint is disabled and holds its events; re-enabled, it
    gets every one of them, each once."""
    configure(hooks, allow_private=True)
    receiver = receivers()
    endpoint_id = register(api, receiver.url, ["job.succeeded"])["id"]
    jobs: list[str] = []

    def traffic(count: int) -> None:
        jobs.extend(submit_diagnostics(api, steps=1, step_seconds=0) for _ in range(count))

    def shown() -> dict[str, Any]:
        body: dict[str, Any] = api.get(f"{ENDPOINTS}/{endpoint_id}").json()
        return body

    traffic(10)
    receiver.wait(3)  # up, and receiving
    receiver.go_down()

    def disabled_under_traffic() -> bool:
        if len(jobs) < 60:
            traffic(2)
        return shown()["enabled"] is False

    wait_for(
        disabled_under_traffic, WINDOW_SECONDS + 60, "the endpoint to be disabled", interval=0.3
    )
    assert "every delivery failed for" in shown()["disabled_reason"]
    traffic(10)  # while disabled: recorded and held
    for job_id in jobs:
        hooks.wait_job(job_id, {"succeeded"})

    receiver.come_back()
    seen = len(receiver.requests)

    def held() -> int:
        with db.session_scope() as session:
            return len(service.list_deliveries(session, endpoint_id, limit=500, status="paused"))

    # Every event has its delivery: either delivered before the outage, or held.
    wait_for(lambda: len(receiver.requests) + held() >= len(jobs), 30, "every event to be recorded")
    time.sleep(1.5)  # longer than a retry: a disabled endpoint gets nothing
    assert len(receiver.requests) == seen
    assert held() > 0

    response = api.patch(f"{ENDPOINTS}/{endpoint_id}", json={"enabled": True})
    assert response.status_code == 200, response.text
    assert response.json()["enabled"] is True

    def delivered_jobs() -> set[str]:
        return {json.loads(r.body)["data"]["id"] for r in list(receiver.requests)}

    wait_for(lambda: delivered_jobs() >= set(jobs), 60, "every event at the receiver")
    time.sleep(1.5)  # a duplicate would come within a retry
    requests = list(receiver.requests)
    events = Counter(json.loads(r.body)["data"]["id"] for r in requests)
    assert set(events) == set(jobs)
    assert max(events.values()) == 1, "an event reached the receiver twice"
    ids = Counter(r.headers["webhook-id"] for r in requests)
    assert len(ids) == len(jobs)
    assert max(ids.values()) == 1
    with db.session_scope() as session:
        rows = service.list_deliveries(session, endpoint_id, limit=500)
    assert len(rows) == len(jobs)  # none created twice
    assert {delivery.status for delivery, _ in rows} == {"succeeded"}
    assert shown()["enabled"] is True


def test_dispatcher_sends_deliveries_whose_message_was_lost(
    hooks: Stack, api: httpx.Client, receivers: Callable[..., Receiver]
) -> None:
    configure(hooks, allow_private=True)
    receiver = receivers()
    created = register(api, receiver.url, ["job.succeeded"])
    with db.session_scope() as session:
        endpoint = session.get(WebhookEndpoint, created["id"])
        assert endpoint is not None
        lost = service.send_test(session, endpoint)
        session.info.pop("conveyor_webhook_outbox")  # as if the process died before publishing
    time.sleep(1)
    assert receiver.requests == []
    # What Beat's next tick does once the grace period has passed.
    later = datetime.now(UTC) + timedelta(seconds=DISPATCH_GRACE_SECONDS + 1)
    assert dispatch_due(now=later) >= 1
    (request,) = receiver.wait(1)
    assert request.headers["webhook-id"] == lost.id


# --- the guarded HTTP client, with an injected resolver -------------------------------------

PUBLIC = "93.184.216.34"


class Rerouted(GuardedBackend):
    """Vets addresses as usual, then opens the socket to the local receiver instead of the
    public address it vetted: nothing here ever connects outside this machine."""

    def open(self, address: str, port: int, *args: Any) -> Any:
        assert address == PUBLIC
        return super().open("127.0.0.1", port, *args)


def resolving(table: dict[str, list[str]], calls: list[str] | None = None) -> NetPolicy:
    def resolve(host: str, port: int) -> list[str]:
        if calls is not None:
            calls.append(host)
        return table[host]

    return NetPolicy(allow_private=False, resolver=resolve)


@pytest.mark.parametrize(
    "location", ["http://internal.test/admin", "http://169.254.169.254/latest/meta-data/"]
)
def test_redirect_to_a_private_address_is_refused(
    receivers: Callable[..., Receiver], location: str
) -> None:
    receiver = receivers(plan=[302], location=location)
    policy = resolving({"hooks.test": [PUBLIC], "internal.test": ["10.0.0.5"]})
    with (
        guarded_client(policy, backend=Rerouted(policy), follow_redirects=True) as client,
        pytest.raises(BlockedDestination, match="refused"),
    ):
        client.get(f"http://hooks.test:{receiver.port}/start")
    (first,) = receiver.requests  # the first hop was allowed and made; the second never
    assert first.headers["host"] == f"hooks.test:{receiver.port}"


def test_connects_to_the_address_it_checked(receivers: Callable[..., Receiver]) -> None:
    # DNS rebinding: a second lookup would answer 127.0.0.1; there is no second lookup.
    receiver = receivers()
    calls: list[str] = []
    answers = iter([[PUBLIC], ["127.0.0.1"]])
    policy = NetPolicy(resolver=lambda host, port: (calls.append(host), next(answers))[1])
    with guarded_client(policy, backend=Rerouted(policy)) as client:
        assert client.get(f"http://rebind.test:{receiver.port}/").status_code == 200
    assert calls == ["rebind.test"]


def test_webhook_sender_does_not_follow_redirects_and_records_refusals(
    receivers: Callable[..., Receiver],
) -> None:
    receiver = receivers(plan=[307], location="http://169.254.169.254/")

    def claim(url: str) -> Claim:
        payload = service.build_payload("webhook.test", {})
        return Claim("msg_test", 1, "ep", url, generate_secret(), payload)

    result = send(claim(receiver.url), timeout=5, policy=NetPolicy(allow_private=True))
    assert result.status_code == 307
    assert result.error is not None
    assert "redirects are not followed" in result.error
    assert len(receiver.requests) == 1

    policy = resolving({"rebound.test": ["127.0.0.1"]})
    result = send(claim(f"http://rebound.test:{receiver.port}/"), timeout=5, policy=policy)
    assert result.refused
    assert result.status_code is None
    assert result.error is not None
    assert "loopback" in result.error
    assert len(receiver.requests) == 1
