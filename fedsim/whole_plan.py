"""What a whole-model scenario trains and sends, decided before any peer exists: the
:class:`~fedsim.models.trainable.ModelPlan` of the scenario's ``model`` section (:func:`plan_for`),
its validation (:func:`check_model`: what a rule, an attack or a probe cannot do with a whole model),
the memory estimate, the frozen prefix's cached outputs (:func:`prepare_features`), and the message
layout (:class:`Exchange`, ``model.bn``; :func:`message_size`). The peers that train it are
:mod:`fedsim.whole`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

import strategies
from fedsim.models.trainable import ModelPlan, num_layers, split
from fedsim.stacked import NORM, StackedModel, resolve_batching
from fedsim.threads import group_count, groups_at_once

if TYPE_CHECKING:
    from fedsim.data.arrays import DatasetInfo
    from fedsim.features import Features
    from fedsim.scenario import Scenario


def plan_for(sc: Scenario, dim: int, num_classes: int) -> ModelPlan:
    """The scenario's model section as a :class:`ModelPlan` (``dim``: the backbone's feature size)."""
    m = sc.model
    return ModelPlan(
        backbone=sc.backbone.name,
        trainable=m.trainable,
        k=m.k or 0,
        hidden=tuple(m.hidden),
        init=m.init,
        exchange=m.exchange,
        bias=sc.training.bias,
        seed=sc.seed,
        dim=dim,
        num_classes=num_classes,
        device=sc.engine.device,
        batching=m.batching,
        bn=m.bn,
    )


def check_model(sc: Scenario, rule: strategies.Strategy, attack: Any,
                info: DatasetInfo | None = None) -> dict[str, Any]:
    """The checks a ``model`` section beyond today's head needs; ``ValueError`` naming the field.
    ``rule``, ``attack``: the scenario's, as validation built them once (the attack None for none;
    :func:`fedsim.validation.check_semantics`), never rebuilt here. With the dataset's ``info``,
    also the run's memory (:func:`memory_estimate`), and then returns the
    :class:`fedsim.runplan.RunPlan` facts computed on the way (``memory``, ``available``,
    ``bytes_per_message``: the run's :func:`message_size`; ``work``: the local steps' FLOP,
    :func:`fedsim.runfacts.training_work` of :func:`sample_flop`); else ``{}``."""
    m = sc.model
    if m.trainable == "last_k":
        n = num_layers(sc.backbone.name, m.hidden)
        if m.k is not None and m.k > n:
            raise ValueError(
                f"model.k: {m.k} is more than the model's {n} layers ({sc.backbone.name} "
                f"{n - len(m.hidden) - 1} + head {len(m.hidden) + 1}); use k <= {n} or trainable: all"
            )
    if m.exchange in ("gradients", "dpsgd") and sc.training.local_steps != 1:
        what = "FedSGD" if m.exchange == "gradients" else "D-PSGD"
        raise ValueError(
            f"training.local_steps: model.exchange: {m.exchange} takes one step per round ({what}), got "
            f"{sc.training.local_steps}; set training.local_steps: 1"
        )
    if m.exchange == "dpsgd" and sc.mode == "federated":
        raise ValueError("model.exchange: dpsgd is decentralized gossip (D-PSGD / BRIDGE); in federated mode use "
                         "exchange: gradients (FedSGD) or params")
    if m.exchange == "gradients" and sc.mode == "decentralized" and sc.topology.kind != "complete":
        # each peer applies its neighbours' gradients, taken at *their* models, and nothing averages
        # the models: on a sparse graph they drift apart and training diverges (measured on
        # scenarios/attack_matrix.yaml, i.i.d., no attack, 200 rounds: 27.7% on the 8-regular graph,
        # test loss rising from round 20; 92.4% on the complete graph, where every peer's model is the same)
        raise ValueError(
            f"model.exchange: gradients in decentralized mode needs topology.kind: complete (got "
            f"{sc.topology.kind}): without parameter averaging the peers' models drift apart and diverge; "
            "use mode: federated, a complete graph, or exchange: params"
        )
    if m.bn == "local":
        from fedsim.models.backbones import get_spec

        spec = get_spec(sc.backbone.name)
        if spec.build is None or not any(isinstance(x, NORM) for x in spec.build().modules()):
            raise ValueError(f"model.bn: local keeps BatchNorm layers local, but backbone {sc.backbone.name!r} "
                             "has none; leave bn: exchanged or use a backbone with BatchNorm (fmnist_bn_cnn)")
        if sc.mode == "federated":
            raise ValueError("model.bn: local (FedBN) keeps each client's BatchNorm layers, so the federated server "
                             "has no global model to evaluate (evaluating the clients' own models is not built); "
                             "use mode: decentralized or bn: exchanged")
    reads_heads = {"validation", "root_update", "overlap", "previous"} & set(rule.needs)
    if rule.scores_whole_models:  # scores candidates through ctx.val_logits (WholePeerGroup._ctx)
        reads_heads -= {"validation"}
    if reads_heads or rule.consolidated:
        raise ValueError(
            f"strategy.name: {sc.strategy.name!r} reads linear output layers "
            f"({', '.join(sorted(reads_heads)) or 'CWR'}); "
            "it runs only with model.trainable: head, no model.hidden, exchange: params, init: pretrained "
            "(Bristle exchanges only its output layer)"
        )
    if sc.probes:
        raise ValueError("probes: the probes read linear heads; remove them or use the default model section")
    if info is not None:
        from fedsim import limits
        from fedsim.runfacts import bytes_per_message, training_work

        est, activations, suffix, flop = _estimate(sc, info, attack)
        available = limits.machine_memory()
        msg = limits.memory_error(est, available)
        if msg:
            raise ValueError(f"model.trainable: the run {msg} (training activations alone {limits.gib(activations)}: "
                             "fewer peers per group, a smaller batch or fewer trainable layers)")
        return {"memory": est, "available": available,
                "bytes_per_message": bytes_per_message(sc, exchange_size(suffix, sc.model.bn)),
                "work": training_work(sc, flop)}
    return {}


def memory_estimate(sc: Scenario, info: DatasetInfo, attack: Any) -> tuple[Any, int]:
    """:func:`fedsim.limits.estimate_memory` for the whole-model run, and the training activations
    it adds (counted in its ``heads`` entry): every module output of the trainable part for one
    sample (a forward pass of zeros), × batch size × the peers of the largest group × 3 (the
    output, its gradient and the module's saved inputs, roughly). Parameters and messages are the
    trainable count, data copies the frozen prefix's output size, the minibatch its gathered inputs
    (:func:`fedsim.limits.minibatch_bytes`, always gathered); a feature shift
    (``dataset.domains``) holds one test set per used domain (:func:`fedsim.domain_shift.shift`).
    ``attack``: the scenario's built attack (None: none), whose forgeries are counted. With
    ``checkpoint.every`` > 0 the checkpoint's state copy, as for heads, plus the peers' BatchNorm
    buffers (:func:`_buffer_bytes`)."""
    est, activations, _, _ = _estimate(sc, info, attack)
    return est, activations


def sample_flop(suffix: torch.nn.Module, x: Tensor) -> int:
    """FLOP of one local step per sample for the trainable part ``suffix`` on one input ``x [1, ...]``
    (the frozen prefix's output): its forward pass and the backward pass to the parameters, counted
    by :class:`torch.utils.flop_counter.FlopCounterMode` as it runs (matrix products and
    convolutions: a forward ``2·MAC``, the weight gradient ``2·MAC`` and, for every layer but the
    first, whose input needs none, the input gradient ``2·MAC``; activations, pooling, BatchNorm,
    the loss and the optimizer's update not counted, as :func:`fedsim.limits.head_flop` counts
    none of them). The loss here is the outputs' sum (the same products as the run's cross-entropy)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        suffix(x).sum().backward()
    suffix.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def _estimate(sc: Scenario, info: DatasetInfo, attack: Any) -> tuple[Any, int, torch.nn.Module, int]:
    """:func:`memory_estimate`, the trainable part it built (for :func:`exchange_size`) and its
    :func:`sample_flop` on the same input."""
    import math

    from fedsim import limits
    from fedsim.data.domains import used_domains
    from fedsim.models.backbones import extract_features, get_spec
    from fedsim.models.trainable import frozen_inputs
    from fedsim.runfacts import forges

    spec = get_spec(sc.backbone.name)
    sample = info.sample()
    dim = int(extract_features(spec.build() if spec.build else None, sample, spec).shape[1])
    plan = plan_for(sc, dim, info.num_classes)
    prefix, suffix = split(plan)
    x = torch.from_numpy(frozen_inputs(prefix, sample, sc.backbone.name))
    sizes: list[int] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: sizes.append(out.numel())) for m in suffix]
    with torch.no_grad():
        suffix(x)
    for h in hooks:
        h.remove()
    groups = group_count(sc)
    per_group = math.ceil(sc.peers.count / groups)
    concurrent, training = groups_at_once(sc, "aggregate"), groups_at_once(sc, "train")
    activations = limits.FLOAT * sum(sizes) * sc.training.batch_size * per_group * training * 3
    # the shifted run's training rows are each peer's own (partitions are disjoint: at most n_train)
    test_sets = max(1, len(used_domains(sc.peers.count, sc.dataset.domains)))
    est = limits.estimate_memory(
        peers=sc.peers.count, num_params=sum(p.numel() for p in suffix.parameters()), dim=int(x[0].numel()),
        n_train=info.n_train, n_test=info.n_test * test_sets, groups=groups, concurrent=concurrent,
        training_concurrent=training,
        adam=sc.training.optimizer == "adam", consolidated=False,
        forged=forges(sc, attack),
        edges=0 if sc.mode == "federated" else limits.directed_edges(
            sc.topology.kind, sc.peers.count, sc.topology.degree, sc.topology.p, sc.topology.fanout),
        ray_actors=limits.ray_actor_processes(sc, groups),
        batches=limits.minibatch_bytes(per_group=per_group, batch=sc.training.batch_size, dim=int(x[0].numel()),
                                       num_classes=0, concurrent=training),
        checkpoints=sc.checkpoint.every > 0,
        # a checkpoint's copies of θ and the optimizer's buffers (num_params each), and of one peer's
        # stacked buffers with BatchNorm (WholePeerGroup.get_state)
        state_bytes=_buffer_bytes(suffix),
    )
    return dataclasses.replace(est, heads=est.heads + activations), activations, suffix, sample_flop(suffix, x)


def _buffer_bytes(suffix: torch.nn.Module) -> int:
    """Bytes of one peer's buffers in a checkpoint (:meth:`fedsim.stacked.StackedModel.checkpoint_buffers`
    of the trainable part ``suffix``; 0 without BatchNorm)."""
    buffers = StackedModel(suffix, 1).checkpoint_buffers()
    return 0 if buffers is None else buffers.nbytes


def prepare_features(sc: Scenario, log: Any = None) -> tuple[Features, ModelPlan]:
    """The trainable part's inputs for the whole dataset (the frozen prefix run once) and the plan.

    The plan's ``batching`` is resolved (:func:`fedsim.stacked.resolve_batching`): ``vmap`` or ``loop``.
    ``trainable: head`` with pretrained weights reuses the cached backbone features
    (:func:`fedsim.features.load_features`, the prefix is the whole backbone); another prefix's
    activations are cached the same way (:func:`_cached_prefix`); an empty prefix gives the raw
    normalised inputs."""
    from fedsim.data.datasets import load
    from fedsim.features import Features, load_features
    from fedsim.models.backbones import extract_features, get_spec

    ds = load(sc.dataset.name, sc.dataset.data_dir)
    spec = get_spec(sc.backbone.name)
    dim = int(extract_features(spec.build() if spec.build else None, ds.x_train[:1], spec).shape[1])
    plan = plan_for(sc, dim, ds.num_classes)
    # model.batching as the run computes it (auto resolved once, here): what the groups run and summary.json records
    plan = dataclasses.replace(plan, batching=resolve_batching(plan.batching, split(plan)[1], plan.device))
    if sc.model.trainable == "head" and sc.model.init == "pretrained":
        feats = load_features(sc.dataset.name, sc.backbone.name, sc.dataset.data_dir, sc.backbone.cache_dir, log)
        return feats, plan
    key, xtr, xte = prefix_inputs(ds, sc, split(plan)[0], log)
    return Features(xtr, ds.y_train, xte, ds.y_test, ds.num_classes, key), plan


def prefix_inputs(
    ds: Any, sc: Scenario, prefix: torch.nn.Module, log: Any = None
) -> tuple[str, np.ndarray, np.ndarray]:
    """``(key, x_train, x_test)``: the trainable part's inputs on dataset ``ds``: the normalised raw
    inputs when the frozen prefix has no weights (nothing worth caching), else its cached activations
    (:func:`_cached_prefix`). Also the inputs of each domain of a feature shift (:mod:`fedsim.domain_shift`)."""
    from fedsim.models.trainable import frozen_inputs

    if not any(True for _ in prefix.state_dict()):
        xtr, xte = (frozen_inputs(prefix, x, sc.backbone.name) for x in (ds.x_train, ds.x_test))
        return f"{ds.name}-{sc.backbone.name}-raw", xtr, xte
    return _cached_prefix(ds, sc, prefix, log)


PREFIX_FORMAT = "1"


def _cached_prefix(ds: Any, sc: Scenario, prefix: torch.nn.Module, log: Any) -> tuple[str, np.ndarray, np.ndarray]:
    """The frozen prefix's activations on ``ds``, from the feature cache directory or computed and
    cached now (atomically), keyed by the dataset's contents, the prefix's structure and weights
    and the input normalisation — as :mod:`fedsim.features` keys the backbone's features. A cache
    file is read without pickle and checked (float32, row counts, one shape, finite); an unusable
    one is recomputed."""
    import hashlib
    import zipfile

    from fedsim import rundir
    from fedsim.features import cache_dir
    from fedsim.models.backbones import get_spec, state_fingerprint
    from fedsim.models.trainable import frozen_inputs

    spec = get_spec(sc.backbone.name)
    parts = [PREFIX_FORMAT, ds.fingerprint(), sc.backbone.name, state_fingerprint(prefix), repr(prefix),
             str(spec.input_shape), repr(spec.mean), repr(spec.std)]
    h = hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]
    key = f"{ds.name.replace(':', '_').replace('/', '_')}-{sc.backbone.name}-prefix{len(prefix)}-{h}"
    path = cache_dir(sc.backbone.cache_dir) / f"{key}.npz"
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as z:
                xtr, xte = z["x_train"], z["x_test"]
            ok = (xtr.dtype == xte.dtype == np.float32 and len(xtr) == len(ds.y_train) and len(xte) == len(ds.y_test)
                  and xtr.shape[1:] == xte.shape[1:] and np.isfinite(xtr).all() and np.isfinite(xte).all())
            if ok:
                return key, xtr, xte
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, TypeError):
            pass
        if log:
            log(f"prefix cache {path} unusable; recomputing it")
    if log:
        log(f"running the frozen prefix ({len(prefix)} modules) of {sc.backbone.name} over {ds.name} "
            f"(once; cached at {path})")
    xtr, xte = frozen_inputs(prefix, ds.x_train, sc.backbone.name), frozen_inputs(prefix, ds.x_test, sc.backbone.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    with rundir.atomic_file(path) as fh:
        np.savez(fh, x_train=xtr, x_test=xte)
    return key, xtr, xte


def num_trainable(plan: ModelPlan) -> int:
    """The trainable parameter count."""
    return sum(p.numel() for p in split(plan)[1].parameters())


def message_size(plan: ModelPlan) -> int:
    """The length of every exchanged vector (:class:`Exchange`): the trainable parameters, with
    ``bn: exchanged`` plus the BatchNorm running statistics, with ``bn: local`` less the BatchNorm
    parameters."""
    return exchange_size(split(plan)[1], plan.bn)


def exchange_size(suffix: torch.nn.Module, bn: str) -> int:
    """:func:`message_size` of an already built trainable part ``suffix`` (``split(plan)[1]``)."""
    return Exchange.of(StackedModel(suffix, 1), bn).size


@dataclass(frozen=True)
class Exchange:
    """What a message holds (``model.bn``, module docstring): ``[v[:, shared], s]`` for a peer's
    exchanged vector ``v [q, P]`` (parameters or gradient) and running statistics ``s [q, S]``."""

    shared: Tensor | None  # the coordinates of v sent (None: all P; bn: local leaves BatchNorm's out)
    stats: int  # running-statistic values appended (0: none sent)
    size: int

    @classmethod
    def of(cls, model: StackedModel, bn: str) -> Exchange:
        if bn not in ("exchanged", "local"):
            raise ValueError(f"model.bn: must be exchanged or local, got {bn!r}")
        if bn == "local":
            shared = torch.from_numpy(np.flatnonzero(~model.norm_params.numpy())).to(model.device)
            return cls(shared, 0, len(shared))
        return cls(None, model.num_stats, model.num_params + model.num_stats)

    def pack(self, v: Tensor, stats: Tensor) -> Tensor:
        """The message ``[q, size]`` of ``v [q, P]`` and ``stats [q, S]``."""
        part = v if self.shared is None else v[:, self.shared]
        return torch.cat([part, stats.to(part.device)], dim=1) if self.stats else part

    def unpack(self, msg: Tensor) -> tuple[Tensor, Tensor | None]:
        """``(the shared coordinates' values [q, len], the statistics [q, S] or None)`` of messages ``[q, size]``."""
        n = self.size - self.stats
        return msg[:, :n], (msg[:, n:] if self.stats else None)

    def merge(self, part: Tensor, own: Tensor) -> Tensor:
        """``own [q, P]`` with the shared coordinates replaced by ``part`` (all of it when nothing is local)."""
        if self.shared is None:
            return part.expand_as(own)
        out = own.clone()
        out[:, self.shared] = part.expand(len(own), -1)
        return out
