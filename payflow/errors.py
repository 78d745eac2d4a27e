"""payflow's error hierarchy; HTTP maps these to status codes in one middleware."""

from __future__ import annotations


class PayflowError(Exception):
    """Base of every error payflow raises on purpose."""

    code = "error"


class IllegalTransition(PayflowError):
    """The transition table has no such (state, trigger) pair."""

    code = "illegal_transition"

    def __init__(self, state: str, trigger: str) -> None:
        super().__init__(f"cannot {trigger} a payment that is {state}")
        self.state = state
        self.trigger = trigger


class GuardRejected(PayflowError):
    """The pair exists but a guard refused it (e.g. a paid amount that differs)."""

    code = "guard_rejected"

    def __init__(self, state: str, trigger: str, reason: str) -> None:
        super().__init__(f"cannot {trigger} a payment that is {state}: {reason}")
        self.state = state
        self.trigger = trigger
        self.reason = reason


class StaleState(PayflowError):
    """A compare-and-set lost: the payment changed since it was read. Re-read; the winner did the work."""

    code = "stale_state"


class NotFound(PayflowError):
    code = "not_found"


class Conflict(PayflowError):
    """The request contradicts what is stored (e.g. same order_id, different parameters)."""

    code = "conflict"


class DuplicatePayment(Conflict):
    """An insert collided with an existing order_id or out_trade_no."""

    code = "duplicate_payment"


class RefundExceedsPayment(PayflowError):
    """Refunds would sum past what the payment paid (HTTP 422)."""

    code = "refund_exceeds_payment"

    def __init__(self, message: str, *, refundable: int) -> None:
        super().__init__(message)
        self.refundable = refundable


class StoreUnavailable(PayflowError):
    """The store could not be reached or failed; nothing was committed by the failing call."""

    code = "store_unavailable"


class NotConfigured(PayflowError):
    """A collaborator this call needs (WeChat Pay, the business backend, the notification keys) is not
    configured; the message names the variables. Nothing was attempted."""

    code = "not_configured"


class SettingsError(PayflowError):
    """A configuration value is missing or malformed; the message names the variable."""

    code = "bad_settings"


class WechatError(PayflowError):
    """A WeChat Pay call failed. `wechat_code` is WeChat's own error code when it sent one."""

    code = "wechat_error"

    def __init__(self, message: str, *, wechat_code: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.wechat_code = wechat_code
        self.status = status


class WechatRetryable(WechatError):
    """Network trouble, 5xx, 429 or USER_PAYING: the outcome is unknown or temporary; retry later."""

    code = "wechat_unavailable"


class WechatFinal(WechatError):
    """WeChat refused for good (other 4xx); retrying the same request cannot succeed."""

    code = "wechat_rejected"


class InvalidRequest(PayflowError):
    """Input that cannot be accepted; `field` names the offending field when there is one."""

    code = "invalid_request"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class Unauthorized(PayflowError):
    code = "unauthorized"


class BillHashMismatch(WechatError):
    """A downloaded bill does not match the SHA1 WeChat announced; it must not be used."""

    code = "bill_hash_mismatch"
