"""The one exception the engine expects from a rule at run time (imports nothing)."""

from __future__ import annotations


class CannotAggregateError(ValueError):
    """The rule cannot aggregate this round's vectors: too few arrived for its ``n``/``f``
    bound, or its work for this many would exceed a set limit (MDA's ``max_subsets``).

    Raise it (not a plain ``ValueError``) from ``__call__`` for such an input-dependent case:
    the engine then keeps the aggregator's model for the round and counts it in ``skipped``
    (``metrics.jsonl``). Any other exception is a bug and stops the run. It is a ``ValueError``,
    so validation, which calls ``check(n, f)``, refuses it like any other bad parameter.
    """
