"""The fault grammar: which misbehaviour a shipment id (or an admin override) asks for.

A fault is a word inside the id, matched case-insensitively, so one id can carry several:
``se-ratelimit2-slow100-7`` is rate limited twice, then answers after 100 ms.

=================  ===========================================================
word               effect
=================  ===========================================================
``notfound``       404 on every call for the shipment
``delivered``      MVMNT: DELIVERED (cancel 409); ShipStation: like ``labeled``
``labeled``        ShipStation: label_purchased with an active label (cancel
                   400 until the label is voided); MVMNT: IN_TRANSIT (409)
``cancelled``      already cancelled (``canceled`` works too)
``ratelimit<N>``   the first N cancel calls answer 429, Retry-After: 1
``flaky<N>``       the first N cancel calls answer 503
``slow<MS>``       every call for the shipment takes MS milliseconds longer
``hang``           never answer (until the client gives up or the server stops)
``reject``         cancel answers 400 (a validation error)
``authfail``       cancel answers 403
=================  ===========================================================

N defaults to 1 and MS to 1000 when the digits are left out. A word glued to other
letters does not count, so ``exchange`` does not mean ``hang``.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, replace
from functools import lru_cache

_WORDS = re.compile(
    r"(?<![a-z])"
    r"(notfound|delivered|labell?ed|cancell?ed|ratelimit|flaky|slow|hang|reject|authfail)"
    r"(\d*)(?![a-z])"
)
_DEFAULT_SLOW_MS = 1000


@dataclass(frozen=True, slots=True)
class FaultSpec:
    not_found: bool = False
    delivered: bool = False
    labeled: bool = False
    cancelled: bool = False
    rate_limited_calls: int = 0
    failing_calls: int = 0
    slow_ms: int = 0
    hang: bool = False
    reject: bool = False
    auth_fail: bool = False

    def to_json(self) -> dict[str, bool | int]:
        return asdict(self)


NO_FAULT = FaultSpec()


# Ids repeat on every call, and load tests use many: a bounded cache keeps parsing off the
# hot path without growing forever.
@lru_cache(maxsize=65536)
def parse_fault(text: str) -> FaultSpec:
    """Read every fault word in ``text``; text without one gives ``NO_FAULT``."""
    spec = NO_FAULT
    for word, digits in _WORDS.findall(text.lower()):
        count = int(digits) if digits else 1
        if word == "notfound":
            spec = replace(spec, not_found=True)
        elif word == "delivered":
            spec = replace(spec, delivered=True)
        elif word.startswith("label"):
            spec = replace(spec, labeled=True)
        elif word.startswith("cancel"):
            spec = replace(spec, cancelled=True)
        elif word == "ratelimit":
            spec = replace(spec, rate_limited_calls=count)
        elif word == "flaky":
            spec = replace(spec, failing_calls=count)
        elif word == "slow":
            spec = replace(spec, slow_ms=int(digits) if digits else _DEFAULT_SLOW_MS)
        elif word == "hang":
            spec = replace(spec, hang=True)
        elif word == "reject":
            spec = replace(spec, reject=True)
        else:
            spec = replace(spec, auth_fail=True)
    return spec
