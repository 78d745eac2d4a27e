"""The refund state machine: a second `Table`, built like the payment one (data rows, pure guards, the same
`transitions` check), and read the same way by the stores and the service.

    created ──accept──▶ processing ──succeed──▶ succeeded ──sync──▶ synced
       │                    │   ╲
       │ fail               │    abnormal ──▶ abnormal ──succeed / close──▶ …
       ▼                    ▼ close
     failed               closed

`created`: stored, WeChat has not accepted it yet (a crash or an unreachable WeChat leaves it here; the sweeper
re-submits the identical request). `processing`: accepted, money on its way. `succeeded`: WeChat says SUCCESS;
the backend has not acknowledged `refund.succeeded` yet. `synced`: it has. `abnormal`: WeChat's ABNORMAL (the
payer's account cannot take the money), parked for a person; queried slowly, since a person may resolve it
on the merchant platform. `closed`: WeChat closed it. `failed`: WeChat refused it for good. `closed` and
`failed` are told to the backend once as `refund.failed`, and no longer count against what can be refunded.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

from payflow.states.table import Guard, Table, requires


class RefundState(enum.StrEnum):
    CREATED = "created"
    PROCESSING = "processing"
    SUCCEEDED = "succeeded"
    SYNCED = "synced"
    ABNORMAL = "abnormal"
    CLOSED = "closed"
    FAILED = "failed"


class RefundTrigger(enum.StrEnum):
    ACCEPT = "accept"  # WeChat took the request (PROCESSING)
    SUCCEED = "succeed"  # WeChat says SUCCESS (answer, query, notification or bill)
    SYNC = "sync"  # the backend acknowledged refund.succeeded
    ABNORMAL = "abnormal"  # WeChat says ABNORMAL
    CLOSE = "close"  # WeChat says CLOSED
    FAIL = "fail"  # WeChat refused the request for good


# Money left (or is on its way out): these count against what a payment can still refund.
COUNTED = frozenset({RefundState.CREATED, RefundState.PROCESSING, RefundState.SUCCEEDED, RefundState.SYNCED,
                     RefundState.ABNORMAL})
# WeChat says the money reached the payer.
REFUNDED = frozenset({RefundState.SUCCEEDED, RefundState.SYNCED})
# Ended without money moving; the backend hears `refund.failed` once.
UNREFUNDED = frozenset({RefundState.CLOSED, RefundState.FAILED})

S, T = RefundState, RefundTrigger
ROWS: tuple[tuple[RefundTrigger, tuple[RefundState, ...], RefundState], ...] = (
    (T.ACCEPT, (S.CREATED,), S.PROCESSING),
    (T.SUCCEED, (S.CREATED, S.PROCESSING, S.ABNORMAL), S.SUCCEEDED),
    (T.SYNC, (S.SUCCEEDED,), S.SYNCED),
    (T.ABNORMAL, (S.CREATED, S.PROCESSING), S.ABNORMAL),
    (T.CLOSE, (S.CREATED, S.PROCESSING, S.ABNORMAL), S.CLOSED),
    (T.FAIL, (S.CREATED,), S.FAILED),
)
del S, T



def _amount_matches(refund: Any, payload: Mapping[str, Any]) -> str | None:
    """WeChat's refunded amount must be the one asked for: anything else is not news about this refund."""
    amount = payload.get("amount")
    if isinstance(amount, bool) or not isinstance(amount, int):
        return "succeed needs WeChat's refund amount (integer fen)"
    if amount != refund.amount:
        return f"WeChat refunded {amount}, the refund is for {refund.amount}"
    return None


GUARDS: Mapping[RefundTrigger, tuple[Guard, ...]] = {
    RefundTrigger.ACCEPT: (requires("refund_id"),),
    RefundTrigger.SUCCEED: (_amount_matches, requires("refund_id")),
    RefundTrigger.FAIL: (requires("code"),),
}

TABLE: Table[RefundState, RefundTrigger] = Table(RefundState, RefundTrigger, ROWS, GUARDS)
