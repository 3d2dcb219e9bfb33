"""Bristle: distance-based prioritizer + performance-based integrator, by default as its authors run it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor
from torch.nn.functional import one_hot

from fedlib.params import Boolean, Integer, Options, Real, param
from strategies._math import (
    PER_CLASS_METRICS,
    check_f,
    dists_to,
    f64,
    to_like,
)
from strategies.base import AggregationContext, Strategy, unflatten
from strategies.registry import register


@register("bristle")
@dataclass
class Bristle(Strategy):
    """Bristle (Verbraeken, de Vos, Pouwelse, "Bristle: Decentralized Federated Learning in
    Byzantine, Non-i.i.d. Environments", arXiv 2110.11006), by default as the authors ran it for
    their logs: ``fedml/src/main/java/nl/tudelft/trustchain/fedml/ai/gar/Bristle.kt``, ``ai/Node.kt``,
    ``ai/SimulatedRunner.kt`` and ``PSI_CA.kt`` of jverbraeken/trustchain-superapp at commit
    f1fb8fb5 (2021-04-12; its runs are ``fedml/evaluations/emulator-55*/evaluations/
    evaluation-simulated-2021-04-12_23.4*.csv``). Every place where the paper, the May code
    (a505112b, 2021-05-19) or fedsim's earlier implementation differ is a parameter (table below).
    The code was read, not copied. DL4J stores the output layer as ``[features, classes]``, so the
    authors' "column" of a class is our row ``W[c, :]`` (``ctx.layer_shape = (C, d)``).

    **1. Prioritizer** (:meth:`select`; all received vectors are candidates when at most
    ``k + e`` resp. ``num_candidates`` arrived):

    * ``selection="nearest_random"`` (April code, default ``k=20, e=5``): the ``k`` received
      vectors nearest to ``own`` (Euclidean) plus ``e`` drawn uniformly from the others.
    * ``"shuffle"`` (May code): ``num_candidates`` (10) drawn uniformly; the thirds below are
      computed there but their use is commented out.
    * ``"thirds"`` (paper): rank by distance; rank ``r`` of ``n`` falls in third ``⌊3r/n⌋``; each
      of ``num_candidates`` draws picks a non-empty third with probability ∝ ``(1−α)², 2α(1−α),
      α²`` (nearest, middle, farthest), then a uniform member of it. (The May code's split,
      ``n/3`` / ``[n/3, 2n/3)`` / last ``n/3``, drops a model when 3 ∤ n; ours covers all ranks.)

    Randomness comes from ``ctx.generator``. With ``classes="overlap"`` senders that share no
    class with the peer are removed first: the authors' peers never send to them (``PSI_CA.kt``,
    ``MIN_PSI_CA = 1``; ``SimulatedRunner.shareModel``).

    **2. Integrator** (:meth:`integrate`). ``F`` = the peer's familiar classes
    (``ctx.local_classes``, else the classes in ``ctx.val_y``). On the local validation set the
    per-class ``metric`` of ``own`` (``o_c``) and of each candidate ``j`` (``m_jc``) is computed
    from argmax predictions over all ``C`` classes: ``"recall"`` (April) or ``"f1"`` (May, paper).

    *Class selection* ``S_j ⊆ F``: the ``s_j`` classes of ``F`` on which ``j`` scores best (ties:
    lower class first), all of ``F`` when ``s_j >= |F|``. ``classes="overlap"`` (April): ``s_j`` =
    ``ctx.overlap[j]``, the private-set-intersection count ``|F_i ∩ F_j|`` the peers learnt when
    they connected (``PSI_CA.kt``; a Byzantine sender may claim every class, and a sender whose
    count is unknown is taken to hold all of ``F``, as ``countPerPeer.getOrDefault`` does);
    ``"top"`` (May: ``getCountPerPeers`` returns 3 for everyone): ``s_j = top``; ``"all"``
    (fedsim before): ``S_j = F``.

    For ``c ∈ S_j``, with ``d = diff_scale·|o_c − m_jc|``: ``s_jc = d^(better_exponent + o_c)``
    if ``m_jc > o_c``, else ``−d^(worse_exponent + o_c)·(1 + p_jc)``, where the April code's
    sequential-attack penalty ``p_jc = Σ_{j' before j} max(0, sequential_penalty·(o_c − m_j'c))``
    runs over the candidates before ``j`` in sender order (``sequential_penalty=0``: May code,
    paper). ``certainty_j = max(0, mean_{S_j} m_j − std_{S_j} m_j)`` (population std; 0 when
    ``S_j`` is empty). Familiar class ``c``: ``w_jc = max(0, weight_scale·sigmoid(max(score_floor,
    s_jc)/score_temperature) − weight_offset)·certainty_j`` for ``c ∈ S_j``, 0 for ``c ∈ F ∖ S_j``.
    Foreign classes ``c ∉ F``: one weight per candidate, the same transform of the *unbounded*
    ``Σ_{c∈S_j} s_jc`` (``unfamiliar_score="sum"``, the code) or their mean (``"mean"``).
    The transform is 0 for scores ``<= score_temperature·ln(weight_offset/(weight_scale −
    weight_offset))`` (≈ −40.5 with the defaults).

    Each class row is integrated separately, own with weight 1:
    ``new_c = (own_c + Σ_j w_jc·x_jc) / (1 + Σ_j w_jc)``.

    **3. Mean removal** after every integration with at least one candidate
    (``mean_removal``): ``"class"`` (``Node.kt``: ``cw.putColumn(i, col − col.meanNumber())``,
    active in both versions): each class row loses its own mean over the features,
    ``W[c, :] −= mean_f W[c, :]`` (the bias is left alone; the authors' head has none). It is not
    logit-invariant: on features that are mostly positive it removes each class's common offset,
    e.g. the uniform push-down that training on other classes gives a foreign class.
    ``"feature"`` (fedsim before): ``W[:, f] −= mean_c W[:, f]``, ``b −= mean_c b``, which changes no
    prediction. ``"none"``.

    **4. Consolidated weights** (``cwr=True``, ``Node.kt``: ``resetTW``/``updateCW``; read by the
    engine through :attr:`consolidated`): each round a peer trains a copy of its head, copies
    back only the rows of the classes it holds and sends that consolidated head; the rule gets the
    trained copy as ``own`` (``newModel = oldModel − gradient`` in ``Bristle.kt``) and its result
    becomes the consolidated head, so foreign rows change through integration only.

    Variants (set the parameters to these values; fedsim's defaults are the April column but for
    ``precision``, float64 by default):

    ====================  ==============  ==============  ===========  ==========
    parameter             April (logs)    May code        paper        fedsim before
    ====================  ==============  ==============  ===========  ==========
    selection             nearest_random  shuffle         thirds       thirds
    k, e                  20, 5           –               –            8, 2
    classes               overlap         top (top=3)     –            all
    metric                recall          f1              f1           f1
    sequential_penalty    2               0               0            0
    mean_removal          class           class           –            feature
    cwr                   true            true            –            false
    training.bias         false           false           –            true
    precision             float32         float32         –            float64
    ====================  ==============  ==============  ===========  ==========

    **Precision** (``precision``): the authors' arrays are DL4J/ND4J ``FLOAT`` (float32): nothing in
    the fedml module at f1fb8fb5 sets another type (no ``Nd4j.setDefaultDataTypes``, ``castTo`` or
    ``dataType(...)``; ``ai/Runner.kt:67`` builds the networks with ``NeuralNetConfiguration.Builder()``,
    default ``FLOAT``), so the candidates' logits are float32, ``gar/Bristle.kt:300-316``
    (``weightedAverage``) sums ``column.mul(weight)`` into a float32 ``dup`` of the own model with
    the weights and their total (``DoubleArray``) in double, and ``ai/Node.kt:267`` removes the
    means of float32 columns. ``"float32"`` computes that way (logits, weighted sum, division and
    mean removal in float32; scores and weights in float64, cast to float32 where they meet a
    column; the sum fused, ``addcmul_``). ``"float64"`` (default; fedsim before) computes all of it
    in float64: fedsim's results stay the bits they were.

    ``training.bias`` is a scenario option (it changes the model): the authors' output layer
    has ``hasBias(false)`` and starts at 0. With a bias, candidates are scored with their full
    head (the code swaps only ``W`` into the network). Remaining departures: ``n`` counts the
    received vectors after sanitisation; the April code pads the distance ranking with up to 20
    recently seen models, which can never be candidates and, with at most 20 fresh ones, change
    nothing; its peers also copy the consolidated head into the trained one at every 10th
    iteration, when they evaluate, which fedsim does not.

    **What is exchanged.** Bristle exchanges only the output layer (``exchanges =
    "output_layer"``): its peers fine-tune a frozen pretrained backbone's head (the paper's
    transfer learning), and the integrator scores candidate *heads* on the local validation
    features. It therefore runs only with the scenario's default ``model`` section (``trainable:
    head``, no ``hidden``, ``exchange: params``); a scenario that trains or exchanges more
    (issue 18, :mod:`fedsim.whole`) is refused at validation with one line. The authors'
    "regular" baselines train whole networks; that setting is ``model.trainable: all`` with the
    other rules.
    """

    selection: str = param("nearest_random", Options(choices=("nearest_random", "shuffle", "thirds")))
    num_candidates: int = param(10, Integer(minimum=1))
    alpha: float = param(0.4, Real(lo=0.0, hi=1.0))
    k: int = param(20, Integer(minimum=0))
    e: int = param(5, Integer(minimum=0))
    classes: str = param("overlap", Options(choices=("overlap", "top", "all")))
    top: int = param(3, Integer(minimum=1))
    metric: str = param("recall", Options(choices=tuple(PER_CLASS_METRICS)))
    sequential_penalty: float = param(2.0, Real(lo=0.0))
    diff_scale: float = param(10.0, Real(lo=0.0, lo_open=True))
    better_exponent: float = param(3.0, Real(lo=0.0, lo_open=True))
    worse_exponent: float = param(4.0, Real(lo=0.0, lo_open=True))
    score_floor: float = param(-100.0, Real(hi=0.0))
    weight_scale: float = param(10.0, Real(lo=0.0, lo_open=True))
    weight_offset: float = param(4.0, Real())
    score_temperature: float = param(100.0, Real(lo=0.0, lo_open=True))
    unfamiliar_score: str = param("sum", Options(choices=("sum", "mean")))
    mean_removal: str = param("class", Options(choices=("class", "feature", "none")))
    cwr: bool = param(True, Boolean())
    precision: str = param("float64", Options(choices=("float64", "float32")))

    needs: ClassVar[frozenset[str]] = frozenset({"validation", "generator", "overlap"})  # overlap: classes="overlap"
    exchanges: ClassVar[str] = "output_layer"
    widens_received: ClassVar[bool] = True  # integrate reads cand only by copying it into its working dtype
    # (buf.copy_; float32 candidates read as they are in float32): exact for half precision in both
    reads_f = False  # f changes nothing this rule does (a scenario's strategy.f is refused)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.k + self.e < 1:
            raise ValueError(f"k: k + e must be >= 1, got k={self.k}, e={self.e}")
        if self.classes != "overlap":  # ctx.overlap is read only by classes="overlap" (counts)
            self.needs = self.needs - {"overlap"}

    def check(self, n: int, f: int) -> None:
        check_f(f)

    @property
    def consolidated(self) -> bool:
        return self.cwr

    # ------------------------------------------------------------------ prioritizer

    def limit(self) -> int:
        """How many received vectors are all candidates (no sampling)."""
        return self.k + self.e if self.selection == "nearest_random" else self.num_candidates

    def select(self, own: Tensor, received: Tensor, generator: torch.Generator | None) -> Tensor:
        """Indices (ascending) of the candidates among ``received``."""
        n = received.shape[0]
        if n <= self.limit():
            return torch.arange(n)
        if generator is None:
            raise ValueError("bristle: needs ctx.generator to sample candidates")
        dev = generator.device
        if self.selection == "shuffle":
            return torch.sort(torch.randperm(n, generator=generator, device=dev).cpu()[: self.num_candidates]).values
        order = torch.sort(dists_to(received, own), stable=True).indices.cpu()
        if self.selection == "nearest_random":
            rest = order[self.k :]
            pick = rest[torch.randperm(rest.numel(), generator=generator, device=dev).cpu()[: self.e]]
            return torch.sort(torch.cat([order[: self.k], pick])).values
        return self._thirds(order, generator)

    def _thirds(self, order: Tensor, generator: torch.Generator) -> Tensor:
        n, dev, a = order.numel(), generator.device, self.alpha
        probs = [(1 - a) ** 2, 2 * a * (1 - a), a**2]
        pools: list[list[int]] = [[], [], []]
        for r, i in enumerate(order.tolist()):
            pools[(3 * r) // n].append(i)
        chosen: list[int] = []
        for _ in range(self.num_candidates):
            avail = [p if pool else 0.0 for p, pool in zip(probs, pools, strict=True)]
            if sum(avail) <= 0:
                break
            weights = torch.tensor(avail, dtype=torch.float64, device=dev)
            t = int(torch.multinomial(weights, 1, generator=generator))
            j = int(torch.randint(len(pools[t]), (1,), generator=generator, device=dev))
            chosen.append(pools[t].pop(j))
        return torch.tensor(sorted(chosen), dtype=torch.long)

    # ------------------------------------------------------------------ integrator

    def _weight(self, score: Tensor, certainty: Tensor) -> Tensor:
        sig = torch.sigmoid(score / self.score_temperature)
        return (self.weight_scale * sig - self.weight_offset).clamp_min(0.0) * certainty

    def counts(
        self, overlap: Tensor | None, shape: tuple[int, ...], num_classes: int, device: torch.device | str
    ) -> Tensor:
        """``s_j`` for candidates of the given ``shape``: the claimed overlap (``classes="overlap"``;
        all classes where it is unknown), ``top``, or all classes."""
        if self.classes == "overlap" and overlap is not None:
            return overlap.to(device=device, dtype=torch.long).reshape(shape)
        s = self.top if self.classes == "top" else num_classes
        return torch.full(shape, s, dtype=torch.long, device=device)

    @staticmethod
    def selected(metric_cand: Tensor, familiar: Tensor, counts: Tensor) -> Tensor:
        """Bool ``[..., k, C]``: the ``counts [..., k]`` familiar classes (``familiar [..., C]``) on
        which each candidate's metric ``[..., k, C]`` is highest, ties to the lower class."""
        fam = familiar.to(torch.bool)[..., None, :].expand_as(metric_cand)
        key = torch.where(fam, f64(metric_cand), torch.full_like(f64(metric_cand), -torch.inf))
        order = torch.sort(key, dim=-1, descending=True, stable=True).indices
        ranks = torch.arange(key.shape[-1], device=key.device).expand_as(order)
        rank = torch.empty_like(order).scatter_(-1, order, ranks)
        return fam & (rank < counts[..., None])

    def _penalties(self, o: Tensor, m: Tensor, present: Tensor) -> Tensor:
        """April code's sequential-attack penalty ``[..., k, C]``: for candidate ``j``, the sum over
        the present candidates before it of ``max(0, sequential_penalty·(o_c − m_j'c))``."""
        if self.sequential_penalty == 0:
            return torch.zeros_like(m)
        p = (self.sequential_penalty * (o - m)).clamp_min(0.0) * f64(present)[..., None]
        out, running = torch.zeros_like(p), torch.zeros_like(p[..., 0, :])
        for j in range(p.shape[-2]):  # in sender order, as the code's loop (sums of exact zeros where absent)
            out[..., j, :] = running
            running = running + p[..., j, :]
        return out

    def _scores(
        self, m_own: Tensor, m_cand: Tensor, familiar: Tensor, counts: Tensor, present: Tensor
    ) -> tuple[Tensor, Tensor]:
        """``(w [..., k, C], u [..., k])`` from the metrics ``m_own [..., C]``, ``m_cand [..., k, C]``,
        the familiar classes ``[..., C]`` and the selection sizes ``counts [..., k]``: ``w`` is the
        weight on the selected classes (0 elsewhere), ``u`` the foreign-class weight."""
        o, m = f64(m_own)[..., None, :], f64(m_cand)
        sel = self.selected(m, familiar, counts)
        d = self.diff_scale * (m - o).abs()
        worse = -d.pow(self.worse_exponent + o) * (1 + self._penalties(o, m, present))
        raw = torch.where(m > o, d.pow(self.better_exponent + o), worse)
        raw = torch.where(sel, raw, torch.zeros_like(raw))  # (not raw · sel: an overflowed score is inf)
        ns = sel.sum(dim=-1)
        nsf, self_ = ns.clamp_min(1).to(m.dtype), f64(sel)
        mean = (m * self_).sum(dim=-1) / nsf
        std = (((m - mean[..., None]) ** 2) * self_).sum(dim=-1).div(nsf).sqrt()  # population std
        certainty = torch.where(ns > 0, (mean - std).clamp_min(0.0), torch.zeros_like(mean))
        w = torch.where(sel, self._weight(raw.clamp_min(self.score_floor), certainty[..., None]), torch.zeros_like(raw))
        total = raw.sum(dim=-1) if self.unfamiliar_score == "sum" else raw.sum(dim=-1) / nsf
        return w, self._weight(total, certainty)

    def class_weights(self, m_own: Tensor, m_cand: Tensor, counts: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Weights when every class given is familiar: ``m_own [F]``, ``m_cand [k, F]`` (per-class
        metric), ``counts [k]`` classes scored per candidate (default: all ``F``) →
        ``(w [k, F], u [k])``, the per-class weights and the foreign-class weight."""
        k, nf = m_cand.shape
        s = torch.full((k,), nf, dtype=torch.long, device=m_own.device) if counts is None else counts.long()
        fam = torch.ones(nf, dtype=torch.bool, device=m_own.device)
        return self._scores(m_own, m_cand, fam, s.to(m_own.device), s.to(m_own.device) > 0)

    def integration_weights(self, m_own: Tensor, m_cand: Tensor, familiar: Tensor, counts: Tensor) -> Tensor:
        """Per-class weights ``[..., k, C]`` of ``k`` candidates: the selected-class weights on the
        familiar classes, the candidate's foreign-class weight on the others, all 0 when the peer
        has no familiar class."""
        w, u = self._scores(m_own, m_cand, familiar, counts, counts > 0)
        fam = familiar.to(torch.bool)[..., None, :]
        out = torch.where(fam, w, u[..., None])
        return torch.where(fam.any(dim=-1, keepdim=True), out, torch.zeros_like(out))

    def _remove_mean_(self, w: Tensor, b: Tensor | None, heard: Tensor) -> None:
        """Mean removal in place on the rows of the peers that ``heard`` a candidate (bool ``[g]``):
        ``x − mean`` there, ``x − 0`` (the same value) elsewhere."""
        if self.mean_removal == "none":
            return
        dim = -1 if self.mean_removal == "class" else -2  # each class row over its features / each feature
        mean = w.mean(dim=dim, keepdim=True)
        w.sub_(mean.masked_fill_(~heard[:, None, None], 0.0))
        if self.mean_removal == "feature" and b is not None:
            b.sub_(b.mean(dim=-1, keepdim=True).masked_fill_(~heard[:, None], 0.0))

    def integrate(
        self,
        own: Tensor,
        cand: Tensor,
        val_x: Tensor,
        val_y: Tensor,
        familiar: Tensor,
        layer_shape: tuple[int, int],
        bias: bool,
        val_mask: Tensor | None = None,
        counts: Tensor | None = None,
    ) -> Tensor:
        """The integrator and mean removal for ``g`` peers at once: ``own [g, P]``, candidates
        ``cand [g, k, P]`` (float32, or the half-precision messages themselves: read only by copying
        them into float64, so the same bits; :attr:`Strategy.widens_received`), validation sets
        ``val_x [g, m, d]``, ``val_y [g, m]`` (``val_mask [g, m]`` marks real samples when they are
        zero-padded), ``familiar [g, C]``, classes scored per candidate ``counts [g, k]`` (default:
        all; 0 = the candidate takes no part) → ``[g, P]``. ``precision="float32"``: the same
        steps in float32 (half-precision candidates widened exactly into the float32 buffer, float32
        ones read without a copy, the weighted sum with ``addcmul_``); a sum beyond float32's range
        overflows there (float64 saturates it), and ``aggregate_batch`` keeps the peer's own row
        where the result is not finite.

        Every operation is per peer (a batched matmul, reductions over classes or samples, loops
        over the ``k`` candidates), so a peer's result does not depend on which others share the
        batch. Memory (float64): one candidate at a time is converted to float64 (into one reused ``[g, P]``
        buffer, twice: for its logits, then for its weighted sum), and the sum, the division, the
        mean removal and the saturation run in place on the float64 copy of ``own``: the same
        values as converting all ``k`` candidates at once, without ``k + 8`` fresh ``[g, P]``
        float64 tensors per call (tests/test_bristle_integrate.py checks the two agree bit for bit)."""
        g, k = cand.shape[:2]
        c = layer_shape[0]
        if counts is None:
            counts = torch.full((g, k), c, dtype=torch.long, device=cand.device)
        wd = torch.float64 if self.precision == "float64" else torch.float32  # the working dtype
        num = own.to(wd)  # [g, P]: own's logits first, then the numerator, in place
        if num.data_ptr() == own.data_ptr():
            num = num.clone()  # (own already in wd: never written into)
        w_own, b_own = unflatten(num, layer_shape, bias)  # [g, C, d], [g, C]: views
        direct = cand.dtype == wd and wd == torch.float32  # float32 candidates in float32: read, no copy
        buf = None if direct else torch.empty_like(num)  # candidate j in wd
        xt = val_x.to(wd).transpose(1, 2)  # [g, d, m]

        def candidate(j: int) -> tuple[Tensor, Tensor | None]:
            if buf is None:
                return unflatten(cand[:, j], layer_shape, bias)
            buf.copy_(cand[:, j])
            return unflatten(buf, layer_shape, bias)

        def head_logits(w: Tensor, b: Tensor | None) -> Tensor:
            return torch.bmm(w, xt) if b is None else torch.baddbmm(b[:, :, None], w, xt)

        logits = [head_logits(w_own, b_own)] + [head_logits(*candidate(j)) for j in range(k)]
        met = PER_CLASS_METRICS[self.metric](torch.stack(logits, dim=1).transpose(2, 3), val_y.long(), val_mask)
        weights = self.integration_weights(met[:, 0], met[:, 1:], familiar, counts)  # [g, k, C], float64
        denom = torch.ones_like(met[:, 0])  # float64 (the authors' totalWeights: a DoubleArray)
        wk = weights.to(wd)  # (float32: the weight meets float32 columns, as ND4J's mul(Double) on FLOAT)
        for j in range(k):  # own always has weight 1
            w_j, b_j = candidate(j)
            if wd == torch.float64:
                w_own.add_(w_j.mul_(wk[:, j, :, None]))  # (not addcmul_: it fuses, and rounds differently)
                if b_own is not None and b_j is not None:
                    b_own.add_(b_j.mul_(wk[:, j]))
            else:  # float32: no bits to keep; the fused form is the fastest and never writes into cand
                w_own.addcmul_(w_j, wk[:, j, :, None])
                if b_own is not None and b_j is not None:
                    b_own.addcmul_(b_j, wk[:, j])
            denom += weights[:, j]
        denom_wd = denom.to(wd)
        w_own.div_(denom_wd[..., None])
        if b_own is not None:
            b_own.div_(denom_wd)
        self._remove_mean_(w_own, b_own, (counts > 0).any(dim=1))  # the authors' peers integrate only when sent a model
        if wd == torch.float32:  # an overflow is not a value: NaN, so aggregate_batch keeps the peer's own row
            num.masked_fill_(num.isinf(), float("nan"))  # (to_like would clamp it to float32's largest finite)
        return to_like(num, own, inplace=True)

    def familiar(self, ctx: AggregationContext) -> Tensor:
        """Bool ``[C]``: ``ctx.local_classes``, else the classes present in ``ctx.val_y``."""
        c = ctx.layer_shape[0]
        if ctx.local_classes is not None:
            return ctx.local_classes.to(torch.bool).reshape(c)
        if ctx.val_y is None:
            raise ValueError("bristle: needs the local validation set (ctx.val_x, ctx.val_y)")
        return torch.bincount(ctx.val_y.long().reshape(-1), minlength=c)[:c] > 0

    def __call__(self, own: Tensor, received: Tensor, ctx: AggregationContext) -> Tensor:
        if ctx.val_x is None or ctx.val_y is None:
            raise ValueError("bristle: needs the local validation set (ctx.val_x, ctx.val_y)")
        dev = received.device
        counts = self.counts(ctx.overlap, (received.shape[0],), ctx.layer_shape[0], dev)
        if not bool((counts > 0).all()):  # senders sharing no class: the authors' peers never hear them
            received, counts = received[counts > 0], counts[counts > 0]
            if received.shape[0] == 0:
                return own.clone()
        idx = self.select(own, received, ctx.generator).to(dev)
        return self.integrate(
            own[None],
            received[idx][None],
            ctx.val_x.to(dev)[None],
            ctx.val_y.to(dev)[None],
            self.familiar(ctx).to(dev)[None],
            ctx.layer_shape,
            ctx.bias,
            counts=counts[idx][None],
        )[0]

    def aggregate_batch(self, own: Tensor, received: Tensor, ctx: AggregationContext) -> Tensor | None:
        """``__call__`` for ``g`` peers at once when each heard at most :meth:`limit` vectors, so all
        of them are candidates and no sampling is needed (senders sharing no class get weight 0,
        which equals leaving them out); ``None`` otherwise (the engine then calls ``__call__`` per
        peer with its generator)."""
        if received.shape[1] > self.limit():
            return None
        if ctx.val_x is None or ctx.val_y is None:
            raise ValueError("bristle: needs the local validation set (ctx.val_x, ctx.val_y)")
        fam = ctx.local_classes
        if fam is None:
            mask = torch.ones_like(ctx.val_y, dtype=torch.bool) if ctx.val_mask is None else ctx.val_mask
            fam = (one_hot(ctx.val_y.long(), ctx.layer_shape[0]) * mask[..., None]).sum(dim=-2) > 0
        counts = self.counts(ctx.overlap, tuple(received.shape[:2]), ctx.layer_shape[0], received.device)
        return self.integrate(
            own, received, ctx.val_x, ctx.val_y, fam, ctx.layer_shape, ctx.bias, ctx.val_mask, counts
        )
