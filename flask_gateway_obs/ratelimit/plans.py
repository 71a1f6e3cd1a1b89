"""What the fast path resolves once per endpoint and method, and what it keeps per request."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .identity import socket_address

if TYPE_CHECKING:
    from .._compat.flask_limiter import RuntimeLimit

__all__ = [
    "EXEMPT_PLAN",
    "NOTHING",
    "SLOW_PLAN",
    "Checked",
    "Header",
    "Hit",
    "Plan",
    "Rule",
    "Variant",
]

#: (client key, count after the hit, window reset timestamp); count is None when the
#: strategy counted (its window is read back for the headers, as Flask-Limiter does).
Hit = tuple[str, int | None, float]
#: A response header, as the WSGI step adds it.
Header = tuple[str, str]


class Rule:
    """One limit of a plan: everything about it that is the same on every request."""

    __slots__ = (
        "amount",
        "amount_text",
        "by_address",
        "cost",
        "expiry",
        "head",
        "item",
        "key_func",
        "limit",
        "limit_header",
        "prefix",
        "scope",
        "shared",
        "tail",
    )

    def __init__(
        self,
        limit: RuntimeLimit,
        scope: str,
        key_prefix: str,
        storage_prefix: str,
        limit_header: str = "X-RateLimit-Limit",
    ):
        item = limit.limit
        self.limit = limit
        self.item = item
        self.amount = item.amount
        self.amount_text = str(item.amount)
        #: The limit's header (the same on every response it describes).
        self.limit_header: Header = (limit_header, self.amount_text)
        self.expiry = item.get_expiry()
        self.cost = int(limit.deduction_amount)
        self.key_func = limit.key_func
        #: The key is the socket address (the default key function), read straight from
        #: the request's environ.
        self.by_address = limit.key_func is socket_address
        self.scope = scope
        self.prefix = key_prefix
        self.shared = limit.shared
        # limits' item.key_for(*args) is "namespace/" + "/".join(args + [amount, multiples,
        # granularity]); Flask-Limiter's args are [key_prefix,] client key, scope.
        middle = f"{key_prefix}/" if key_prefix else ""
        self.head = f"{storage_prefix}{item.namespace}/{middle}"
        self.tail = f"/{scope}/{item.amount}/{item.multiples}/{item.GRANULARITY.name}"

    def args(self, client: str) -> list[str]:
        """The identifiers Flask-Limiter hits this limit with (``RequestLimit.request_args``)."""
        return [self.prefix, client, self.scope] if self.prefix else [client, self.scope]

    def key(self, client: str) -> str:
        """The storage key of ``client``'s window (what the storage itself is called with)."""
        return f"{self.head}{client}{self.tail}"


class Variant:
    """The limits one step evaluates, given what earlier steps of the request marked seen."""

    __slots__ = ("header", "rules", "seen")

    def __init__(self, rules: tuple[Rule, ...], seen: tuple[RuntimeLimit, ...]) -> None:
        self.rules = rules
        #: Flask-Limiter's ``seen_limits`` after the step (defaults are counted once a request).
        self.seen = seen
        #: Which limit the headers describe when none is breached: the first not shared.
        self.header = next((i for i, rule in enumerate(rules) if not rule.shared), 0)


NOTHING: tuple[RuntimeLimit, ...] = ()


class Plan:
    """One step of the check (the before-request gate, or a decorated view) for one
    endpoint and method, resolved once."""

    __slots__ = ("after_gate", "alone", "exempt", "gate_seen", "name", "slow")

    def __init__(
        self,
        *,
        slow: bool = False,
        exempt: bool = False,
        name: str = "",
        alone: Variant | None = None,
        gate_seen: tuple[RuntimeLimit, ...] | None = None,
        after_gate: Variant | None = None,
    ) -> None:
        #: Flask-Limiter's own evaluation runs this step.
        self.slow = slow
        #: Nothing is limited (no endpoint, or a static file).
        self.exempt = exempt
        #: The qualified name of the view (a decorated step runs for it alone).
        self.name = name
        #: The step when nothing was seen before it in the request.
        self.alone = alone or Variant((), NOTHING)
        #: What the gate of the same endpoint and method marks seen, and the step after it.
        self.gate_seen = gate_seen
        self.after_gate = after_gate


SLOW_PLAN = Plan(slow=True)
EXEMPT_PLAN = Plan(exempt=True)


#: What a fast step did in this request, kept on Flask's request context: enough for the
#: headers, or for handing Flask-Limiter its own per-request state (``current_limit``) if
#: anything asks for it. A plain tuple (it is made on every request):
#: ``(seen, rules, hits, header, breached)`` - Flask-Limiter's ``seen_limits`` after the
#: step, the rules evaluated, one hit per rule (None for a rule skipped: an empty client
#: key), the index of the rule the headers describe (-1 for none), the indexes of the
#: rules breached.
Checked = tuple[
    tuple["RuntimeLimit", ...], tuple[Rule, ...], list[Hit | None], int, tuple[int, ...]
]
