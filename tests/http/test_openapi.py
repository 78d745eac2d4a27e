"""The OpenAPI document: valid, served, in step with the routes, and honoured by the app (schemathesis).

schemathesis sends its cases with `requests`, which blocks; the app runs in pytest-aiohttp's server on the
test's event loop, so every schemathesis run goes to a worker thread (`asyncio.to_thread`) while the loop
keeps serving. Generation is derandomized and bounded, so a run is repeatable and takes seconds.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime as dt
import json
from collections.abc import Callable, Iterator
from typing import Any

import hypothesis
import pytest
import requests
import schemathesis
from aiohttp import web
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from payflow import models
from payflow.app import create_app
from payflow.clock import FakeClock
from payflow.devkeys import KeySet
from payflow.http import openapi
from payflow.settings import Settings
from payflow.states import Source, State, Trigger
from payflow.store import PaymentStore
from payflow.wechat.api import Transaction
from payflow.wechat.notify import NotificationVerifier
from tests import factories
from tests import notifications as wx
from tests.conftest import ADMIN_TOKEN, API_TOKEN
from tests.fakes import FakeWechat

CONFIG = schemathesis.Config.from_dict({
    # Generated cases carry a valid token; negative ones may drop or garble it, and must then get 401.
    "auth": {"openapi": {"apiToken": {"bearer": API_TOKEN}, "adminToken": {"bearer": ADMIN_TOKEN}}},
    # Refusing a request as too large or of the wrong media type is refusing it too.
    "checks": {"negative_data_rejection": {"expected-statuses": [400, 401, 404, 413, 415, 422]}},
})
SCHEMA = schemathesis.openapi.from_dict(openapi.SPEC, config=CONFIG)
LABELS = [result.ok().label for result in SCHEMA.get_all_operations()]
POSITIVE, NEGATIVE = schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance, negative_data_rejection]
EXAMPLES = 100  # per operation and generation mode
BILL_DATE = "2026-11-25"
NOTIFY = "POST /v1/wechat/notify"


class AnsweringWechat(FakeWechat):
    """FakeWechat that also answers queries (NOTPAY) and closes, so the fuzz reaches close's and recheck's 200s."""

    async def query(self, out_trade_no: str, appid: str | None = None) -> Transaction | None:
        return Transaction(out_trade_no=out_trade_no, trade_state="NOTPAY")

    async def close_order(self, out_trade_no: str) -> None:
        return None


def _route_table(app: web.Application) -> set[tuple[str, str]]:
    # The operator console's HTML pages (payflow/console, its own tests) are not the JSON API described here.
    return {(route.method, route.resource.canonical) for route in app.router.routes()
            if route.method != "HEAD" and route.resource is not None
            and not route.resource.canonical.startswith("/console/")}


def _with_openapi(app: web.Application) -> web.Application:
    # Until routes.setup calls openapi.setup; a no-op afterwards.
    if ("GET", "/openapi.json") not in _route_table(app):
        openapi.setup(app)
    return app


# --- the document ---------------------------------------------------------------------------------


def test_spec_is_valid_openapi() -> None:
    SCHEMA.validate()  # the official OpenAPI 3.0 meta-schema, with schemathesis' validator
    assert openapi.SPEC["openapi"] == "3.0.3"
    assert len(LABELS) == sum(len(item) for item in openapi.SPEC["paths"].values())


def test_spec_covers_every_route(settings: Settings) -> None:
    app = _with_openapi(create_app(settings, run_sweeper=False))
    documented = {(method.upper(), path) for path, item in openapi.SPEC["paths"].items() for method in item}
    assert documented == _route_table(app)


async def test_served_without_auth(aiohttp_client: Any, settings: Settings) -> None:
    client = await aiohttp_client(_with_openapi(create_app(settings, run_sweeper=False)))
    response = await client.get("/openapi.json")
    assert response.status == 200 and response.content_type == "application/json"
    served = await response.json()
    assert served == openapi.SPEC
    schemathesis.openapi.from_dict(served).validate()


# --- the app against the document -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Served:
    base_url: str
    seeded: dict[str, str]  # name → out_trade_no


async def _walk(store: PaymentStore, payment: models.Payment, steps: list[tuple[Trigger, State, dict[str, Any]]]
                ) -> models.Payment:
    for trigger, to, changes in steps:
        payment = await store.transition(payment, to, trigger, source=Source.API, at=factories.T0,
                                         detail={"seeded": True}, changes=changes)
    return payment


async def _seed(store: PaymentStore) -> dict[str, str]:
    """A payment in every state, past its deadlines (so `stuck` lists some), and one day's reconciliation."""
    prepay = (Trigger.PREPAY, State.PREPAID, {"prepay_id": "wx_prepay_seed"})
    pay = (Trigger.PAY, State.NOTIFIED, {"transaction_id": "4200000000000000001", "paid_at": factories.T0,
                                         "paid_amount": 100})
    sync = (Trigger.SYNC, State.SYNCED, {})
    paths: dict[str, list[tuple[Trigger, State, dict[str, Any]]]] = {
        "created": [],
        "prepaid": [prepay],
        "notified": [prepay, pay],
        "synced": [prepay, pay, sync],
        "reconciled": [prepay, pay, sync, (Trigger.RECONCILE, State.RECONCILED, {})],
        "closed": [prepay, (Trigger.CLOSE, State.CLOSED, {})],
        # Two in review: requeue and dismiss each take one out of it.
        "review_paid": [prepay, pay, (Trigger.FLAG, State.NEEDS_REVIEW, {})],
        "review_unpaid": [prepay, (Trigger.FLAG, State.NEEDS_REVIEW, {})],
    }
    seeded = {}
    for name, steps in paths.items():
        payment = factories.payment(created_at=factories.T0 - dt.timedelta(hours=3),
                                    expires_at=factories.T0 - dt.timedelta(hours=1), attach=name)
        await store.create(payment, source=Source.API, detail={})
        seeded[name] = (await _walk(store, payment, steps)).out_trade_no
    bill_date = dt.date.fromisoformat(BILL_DATE)
    run_id = await store.start_reconciliation(bill_date, factories.T0)
    await store.finish_reconciliation(run_id, status="discrepancies", counts={"lines": 3}, at=factories.T0)
    await store.add_discrepancy(models.Discrepancy(bill_date, seeded["synced"], "AMOUNT_MISMATCH",
                                                   {"billed_amount": 99}, factories.T0))
    return seeded


@pytest.fixture
async def served(aiohttp_client: Any, settings: Settings, sqlite_store: PaymentStore, clock: FakeClock,
                 verifier: NotificationVerifier) -> Served:
    app = create_app(settings, store=sqlite_store, wechat=AnsweringWechat(), verifier=verifier, clock=clock,
                     run_sweeper=False)
    seeded = await _seed(sqlite_store)
    client = await aiohttp_client(_with_openapi(app))
    return Served(str(client.make_url("")).rstrip("/"), seeded)


def _notify_refused(ctx: Any, response: schemathesis.Response, case: schemathesis.Case) -> None:
    """Unsigned (fuzzed) notifications are refused with a 4xx in WeChat's FAIL shape, never acknowledged."""
    assert 400 <= response.status_code < 500, f"an unsigned notification got {response.status_code}"
    assert response.json()["code"] == "FAIL"


def _strategy(operation: schemathesis.APIOperation, mode: schemathesis.GenerationMode,
              seeded: dict[str, str]) -> st.SearchStrategy[schemathesis.Case]:
    strategies = [operation.as_strategy(mode)]
    names = {parameter.name for parameter in operation.path_parameters}
    # Random ids are 404s; the seeded ones reach the 200s and 409s (and, negated, the body's 4xx).
    if "out_trade_no" in names and (mode is POSITIVE or operation.body):
        strategies += [operation.as_strategy(mode, path_parameters={"out_trade_no": no}) for no in seeded.values()]
    if operation.label == "GET /v1/admin/discrepancies" and mode is POSITIVE:
        strategies.append(operation.as_strategy(mode, query={"date": BILL_DATE}))
    return st.one_of(strategies)


def _negatable(operation: schemathesis.APIOperation) -> bool:
    """Whether anything in the operation has constraints to break (X-Request-Id takes any string)."""
    return bool(operation.body) or any(p.name != "X-Request-Id" for p in operation.iter_parameters())


def _token(operation: schemathesis.APIOperation) -> str:
    return ADMIN_TOKEN if operation.definition.raw["security"] == [{"adminToken": []}] else API_TOKEN


def _coverage_cases(operation: schemathesis.APIOperation) -> Iterator[schemathesis.Case]:
    """schemathesis' coverage phase: boundary values, wrong types, missing fields, other methods, media types."""
    token = _token(operation)
    config = SCHEMA.config.generation_for(operation=operation)
    for case in SCHEMA.iter_coverage_cases(operation, generation_modes=[POSITIVE, NEGATIVE],
                                           generation_config=config):
        # Auth is applied to generated cases only; keep it off the cases about auth itself.
        if operation.definition.raw["security"] and case.meta.phase.data.parameter != "Authorization":
            case.headers = {**(case.headers or {}), "Authorization": f"Bearer {token}"}
        yield case


def _run(operation: schemathesis.APIOperation, served: Served) -> None:
    additional: list[Callable[..., Any]] = [_notify_refused] if operation.label == NOTIFY else []
    with requests.Session() as session:
        session.trust_env = False  # no proxy for 127.0.0.1

        def call(case: schemathesis.Case) -> None:
            case.call_and_validate(base_url=served.base_url, session=session, checks=CHECKS,
                                   additional_checks=additional, timeout=10)

        # One run per mode: inside a single one_of, Hypothesis may starve a branch for a whole run.
        for mode in (POSITIVE, NEGATIVE) if _negatable(operation) else (POSITIVE,):

            @hypothesis.settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
                                 suppress_health_check=list(hypothesis.HealthCheck), print_blob=False)
            @hypothesis.given(case=_strategy(operation, mode, served.seeded))
            def fuzz(case: schemathesis.Case) -> None:
                call(case)

            fuzz()
        for case in _coverage_cases(operation):
            if case.method.upper() == operation.method.upper():  # other methods: test_other_methods_get_405
                call(case)


@pytest.mark.parametrize("label", LABELS)
async def test_app_honours_the_spec(label: str, served: Served) -> None:
    method, path = label.split(" ", 1)
    await asyncio.to_thread(_run, SCHEMA[path][method], served)


def _other_methods(base_url: str) -> None:
    with requests.Session() as session:
        session.trust_env = False
        for label in LABELS:
            method, path = label.split(" ", 1)
            operation = SCHEMA[path][method]
            for case in _coverage_cases(operation):
                if case.method.upper() != operation.method.upper():
                    case.call_and_validate(base_url=base_url, session=session, checks=[unsupported_method])


async def test_other_methods_get_405_with_allow(served: Served) -> None:
    await asyncio.to_thread(_other_methods, served.base_url)


# --- chosen requests: what fuzzing rarely produces ------------------------------------------------

def _cursor(parts: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(parts).encode()).decode().rstrip("=")


def _send(served: Served, label: str, *, path: dict[str, str] | None = None, query: dict[str, str] | None = None,
          media_type: str | None = None, data: bytes | None = None, headers: dict[str, str] | None = None,
          ) -> schemathesis.Response:
    method, template = label.split(" ", 1)
    operation = SCHEMA[template][method]
    case = operation.Case(path_parameters=path, query=query, media_type=media_type)
    sent = {**({"Authorization": f"Bearer {_token(operation)}"} if operation.definition.raw["security"] else {}),
            **({"Content-Type": media_type} if media_type else {}), **(headers or {})}
    response = case.call(base_url=served.base_url, headers=sent, data=data, timeout=10)
    case.validate_response(response, checks=CHECKS, headers=sent)
    return response


PAYMENT = json.dumps({"order_id": "order-x", "amount": 1, "description": "Beans", "openid": "o-1"}).encode()


async def test_refusals_match_the_spec(served: Served) -> None:
    action = "POST /v1/admin/payments/{out_trade_no}/{action}"
    prepaid = {"out_trade_no": served.seeded["prepaid"], "action": "recheck"}
    json_body = {"media_type": "application/json"}
    refusals: list[tuple[str, dict[str, Any], int]] = [
        ("POST /v1/payments", {"media_type": "text/plain", "data": b"x"}, 415),
        ("POST /v1/payments", {**json_body, "data": b"{"}, 400),
        ("POST /v1/payments", {**json_body, "data": b"[]"}, 400),
        ("POST /v1/payments", {**json_body, "data": b" " * 5000}, 413),
        ("POST /v1/payments", {**json_body, "data": PAYMENT, "headers": {"Authorization": "Bearer wrong"}}, 401),
        ("GET /v1/payments/{out_trade_no}/events", {"path": {"out_trade_no": served.seeded["prepaid"]},
                                                    "headers": {"Authorization": f"Bearer {API_TOKEN}"}}, 401),
        (action, {"path": prepaid, "media_type": "text/plain", "data": b"note"}, 415),
        (action, {"path": prepaid, **json_body, "data": b'{"note": '}, 400),
        (action, {"path": prepaid, **json_body, "data": b'{"note": "n", "by": "ops"}'}, 422),
        (action, {"path": {**prepaid, "out_trade_no": "T9999999999"}, **json_body, "data": b'{"note": "n"}'}, 404),
        (NOTIFY, {**json_body, "data": b" " * 5000}, 413),
    ]

    def send_all() -> list[int]:
        return [_send(served, label, **kwargs).status_code for label, kwargs, _ in refusals]

    assert await asyncio.to_thread(send_all) == [status for _, _, status in refusals]


async def test_signed_notifications_match_the_spec(served: Served, keyset: KeySet, clock: FakeClock) -> None:
    def signed(body: bytes) -> dict[str, Any]:
        headers = wx.signed_headers(keyset, body, timestamp=int(clock.now().timestamp()))
        return {"media_type": "application/json", "data": body, "headers": headers}

    paid = wx.envelope(keyset, wx.transaction(keyset, served.seeded["prepaid"], 100))
    statuses = await asyncio.to_thread(lambda: [_send(served, NOTIFY, **signed(body)).status_code
                                                for body in (paid, paid, b'{"id": "n-1"}')])
    assert statuses == [204, 204, 400]  # paid, its duplicate, signed but malformed


# --- bugs found while writing the spec: these fail until payloads/middlewares are fixed ------------


@pytest.mark.parametrize(("label", "kwargs"), [
    pytest.param("POST /v1/payments",
                 {"media_type": "application/json", "data": PAYMENT.replace(b"order-x", b"\\ud800")},
                 id="lone-surrogate-in-body"),
    pytest.param("POST /v1/admin/payments/{out_trade_no}/{action}",
                 {"media_type": "application/json", "data": b'{"note": "\\udfff"}', "path": "prepaid"},
                 id="lone-surrogate-in-note"),
    pytest.param("POST /v1/payments", {"media_type": "application/json", "data": b"[" * 3000},
                 id="deeply-nested-body"),
    pytest.param("GET /v1/admin/payments", {"query": {"cursor": base64.urlsafe_b64encode(b"[" * 3000).decode()}},
                 id="deeply-nested-cursor"),
    pytest.param("GET /v1/admin/payments",
                 {"query": {"state": "stuck", "cursor": _cursor(["0001-01-01T00:00:00+01:00", "T0000000001"])}},
                 id="stuck-cursor-out-of-range"),
])
async def test_hostile_input_is_refused_not_crashed(served: Served, label: str, kwargs: dict[str, Any]) -> None:
    if kwargs.get("path"):
        kwargs = {**kwargs, "path": {"out_trade_no": served.seeded[kwargs["path"]], "action": "recheck"}}
    response = await asyncio.to_thread(_send, served, label, **kwargs)
    assert 400 <= response.status_code < 500


@pytest.mark.parametrize("query", [
    pytest.param({"date": "20261125"}, id="date-basic-format"),
    pytest.param({"date": "2026-W48-3"}, id="date-week-format"),
    pytest.param({"limit": "+5"}, id="limit-plus-sign"),
    pytest.param({"limit": "1_0"}, id="limit-underscore"),
    pytest.param({"limit": "\u0665"}, id="limit-arabic-indic-digit"),
    pytest.param({"state": ""}, id="state-empty"),
])
async def test_parameters_are_as_strict_as_documented(served: Served, query: dict[str, str]) -> None:
    label = "GET /v1/admin/discrepancies" if "date" in query else "GET /v1/admin/payments"
    response = await asyncio.to_thread(_send, served, label, query=query)
    assert response.status_code == 422


async def test_requeue_needs_a_confirmed_payment(served: Served) -> None:
    path = {"out_trade_no": served.seeded["review_unpaid"], "action": "requeue"}
    response = await asyncio.to_thread(_send, served, "POST /v1/admin/payments/{out_trade_no}/{action}", path=path,
                                       media_type="application/json", data=b'{"note": "customer says paid"}')
    # Flagged before WeChat ever confirmed a payment: requeueing would mark it paid with nothing to forward.
    assert response.status_code == 409
    assert response.json()["error"] == {"code": "action_not_applicable", "state": "needs_review",
                                        "message": response.json()["error"]["message"]}
