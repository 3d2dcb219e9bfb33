"""Shared plumbing of the pre-aggregators (bucketing, ARC, NNM): their inner rule's parameters,
building it, and what a pre-aggregator reports about itself given its inner rule
(:class:`PreAggregator`, the one place).

What the engine and validation read of a rule (``strategies.base.Strategy``) and what a
pre-aggregator reports, given its inner rule:

====================  =============================================================================
``needs``             combined: the inner rule's, plus what the pre-aggregator's own step reads
                      (:attr:`PreAggregator.step_needs`; bucketing: ``generator``). Refused in one
                      line when the inner rule needs ``overlap`` (one entry per sender) and the
                      pre-aggregator's rows are no longer one per sender (:attr:`PreAggregator.mixes`)
``exchanges``         the inner rule's (the messages carry what the inner rule's peers send)
``consolidated``      the inner rule's (Bristle's CWR: the engine keeps the consolidated heads and
                      hands the rule the trained copy as ``own``; the pre-aggregator passes ``own``
                      on, mixed (NNM with ``include_own``) or not)
``scores_whole_models``  the inner rule's (the pre-aggregator's own step is flat-vector arithmetic,
                      defined on any vector; only the inner rule reads the validation set)
``reads_f``           combined: the pre-aggregator's own step (:attr:`PreAggregator.step_reads_f`;
                      NNM's ``N − f`` nearest, ARC's clipped count) or the inner rule
``float64_input``     the pre-aggregator's own, never the inner rule's: the inner rule never sees the
                      caller's rows (ARC and bucketing hand it rows in ``received``'s dtype, so a
                      float64 scratch would change what it computes on): False
``call_is_batched``,  the pre-aggregator's own, never the inner rule's: its ``__call__`` is per peer
``batch_on_cpu``,     (NNM's distance matrix, ARC's sort, bucketing's permutation are one peer's), so
``aggregate_batch``   it has no batched form and the engine aggregates it in the per-peer loop
                      (``fedsim.gossip.has_batched_form`` False), whatever the inner rule's form
``check(n, f)``       the inner rule's on what it will be handed (each pre-aggregator's ``check``)
``name``              its own (the registered name, what the scenario and ``summary.json`` record)
====================  =============================================================================
"""

from __future__ import annotations

from typing import Any, ClassVar

from fedlib.params import Mapping, Text, param
from fedlib.registry import param_names
from strategies.base import Strategy
from strategies.registry import REGISTRY, build

__all__ = ["PreAggregator", "build_inner", "inner_field", "inner_params_field"]


def inner_field() -> Any:
    """The ``inner`` parameter of a pre-aggregator: the name of the rule it hands its vectors to."""
    return param("median", Text(what="a registered rule's name (fedsim list strategies)"))


def inner_params_field() -> Any:
    """The ``inner_params`` parameter of a pre-aggregator: the inner rule's parameters."""
    return param(factory=dict, check=Mapping(what="a mapping of the inner rule's parameters"))


def build_inner(inner: str, inner_params: dict[str, Any], include_own: bool | None) -> Strategy:
    """Build the rule a pre-aggregator hands its vectors to (``inner``/``inner_params`` already
    checked against their declarations). ``include_own`` (unless None) is passed down as the
    inner rule's ``include_own`` unless ``inner_params`` sets it (rules without the parameter keep
    their own behaviour), so a federated server's ``include_own: false`` reaches the inner rule."""
    params = dict(inner_params)
    if include_own is not None and "include_own" in param_names(REGISTRY.get(inner)):
        params.setdefault("include_own", include_own)
    try:
        return build(inner, params)
    except ValueError as e:
        raise ValueError(f"inner: {e}") from None


class PreAggregator(Strategy):
    """Base of the rules that transform the vectors and hand them to an ``inner`` rule (dataclass
    fields ``inner``, ``inner_params``, ``include_own`` declared by the subclass). Its
    ``__post_init__`` builds the inner rule (``self._inner``) and makes the instance report what the
    engine must do for it (the module docstring's table). A subclass declares its own step:

    * :attr:`step_needs`: context fields its own step reads (added to the inner rule's ``needs``);
    * :attr:`step_reads_f`: whether its own step reads ``f`` (``reads_f`` is this or the inner rule's);
    * :attr:`mixes`: what the rows it hands the inner rule are when row ``i`` is no longer sender
      ``i``'s (then per-sender context, ``needs`` ``"overlap"``, is refused); ``""``: row ``i`` is
      sender ``i``'s, transformed (ARC's clipping);
    * :attr:`passes_include_own`: whether its ``include_own`` is passed down as the inner rule's
      (:func:`build_inner`; NNM's is its own: the inner rule keeps its default).
    """

    step_needs: ClassVar[frozenset[str]] = frozenset()
    step_reads_f: ClassVar[bool] = True
    mixes: ClassVar[str] = ""
    passes_include_own: ClassVar[bool] = True
    inner: str
    inner_params: dict[str, Any]
    include_own: bool

    def __post_init__(self) -> None:
        super().__post_init__()
        built = build_inner(self.inner, self.inner_params, self.include_own if self.passes_include_own else None)
        if "overlap" in built.needs and self.mixes:
            raise ValueError(
                f"inner: {self.inner} reads each sender's claimed class overlap (needs 'overlap'), but the rows "
                f"{self.name} hands it are {self.mixes}, no sender's; give the inner rule parameters that do not "
                "read it (bristle: classes top or all) or use arc, which keeps one row per sender"
            )
        self._inner = built
        self.needs = built.needs | self.step_needs
        self.exchanges = built.exchanges
        self.scores_whole_models = built.scores_whole_models
        self.reads_f = self.step_reads_f or built.reads_f

    @property
    def consolidated(self) -> bool:
        """The inner rule's (:attr:`Strategy.consolidated`): with Bristle's CWR the engine keeps the
        consolidated heads, sends them, and hands this rule the trained copy as ``own``."""
        return self._inner.consolidated
