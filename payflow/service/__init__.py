"""The use cases: the only package that combines the state machine, the store and the outside clients.

`PaymentService` is assembled from one mixin per concern, all sharing `ServiceCore`.
"""

from __future__ import annotations

from payflow.service.core import SHANGHAI, ServiceCore
from payflow.service.forwarding import Forwarding
from payflow.service.operating import ActionNotApplicable, Operating
from payflow.service.paid import Paid
from payflow.service.placement import Created, NewPayment, Placement
from payflow.service.reviewing import Reviewing
from payflow.service.sweeping import Sweeping

__all__ = ["SHANGHAI", "ActionNotApplicable", "Created", "NewPayment", "PaymentService", "ServiceCore"]


class PaymentService(Placement, Paid, Forwarding, Sweeping, Reviewing, Operating):
    """create → place → (notification | query | bill) → forward → sync; sweeps re-drive every step."""
