"""The gossip rollback on a trained run (:func:`attacks.probes.gossip_rollback` fed from the run's
recorded messages): one place for the two probes that offer it, ``kind: unlearning`` (the head of
one target) and ``kind: federated_unlearning`` (every head, the whole federation or the peers of a
hop arm replaying).

The messages come from the engine's recording path (``Simulation(record_messages=
fedsim.runner.message_window(...))`` → ``RoundRecord.messages`` → ``Run.messages`` →
``ProbeContext.messages``). When the rollback cannot run the reason is returned instead, and the
probes write it to ``skipped_methods`` in ``probes.json``.
"""

from __future__ import annotations

from collections.abc import Collection

import torch
from torch import Tensor

from attacks import probes as ap
from fedsim.probe_context import _Ctx, in_neighbors

NO_MESSAGES = "the run kept no messages for the whole window (a whole model, or a resumed run)"


def skip_reason(ctx: _Ctx, rounds: int) -> str | None:
    """Why the rollback of the last ``rounds`` rounds cannot run on ``ctx`` (None: it can): the window
    is 0, the run is not decentralized, its rule is not fedavg with the own head, it has Byzantine
    peers, the optimizer is not SGD, or the run kept no messages for every round of the window (a
    whole model, a resumed run: :func:`fedsim.runner.message_window`)."""
    k, st = min(rounds, ctx.rounds), ctx.strategy
    if k == 0:
        return "rollback_rounds is 0"
    if ctx.federated:
        return "not decentralized (one global model, no gossip to replay)"
    if st is not None and (st.name != "fedavg" or st.params.get("include_own", True) is False):
        return f"rule {st.name!r} (only fedavg's uniform mean with the own head is linear)"
    if not ctx.honest.all():
        return "Byzantine peers in the run (the replay needs every peer to cooperate)"
    if ctx.training.optimizer != "sgd":
        return f"optimizer {ctx.training.optimizer!r} (the linearised local training is SGD's)"
    if any(r not in ctx.messages for r in range(ctx.rounds - k, ctx.rounds)):
        return NO_MESSAGES
    return None


def rollback_heads(ctx: _Ctx, peer: int, rounds: int,
                   replaying: Collection[int] | None = None) -> tuple[Tensor | None, dict[str, object]]:
    """Every head ``[N, P]`` after the last ``rounds`` (at most all) rounds' averages are replayed
    without ``peer``'s messages, each replaying peer's local SGD linearised around its message (the
    Hessian of its whole shard there); ``replaying``: the peers that replay (the others keep their
    recorded heads and messages; ``None``: every peer). ``(None, {"skipped": why})`` when it cannot
    run (:func:`skip_reason`), else ``(heads, {"rounds": K})``."""
    why = skip_reason(ctx, rounds)
    if why is not None:
        return None, {"skipped": why}
    k, t, shape, bias = min(rounds, ctx.rounds), ctx.training, ctx.layer_shape, ctx.bias
    window = list(range(ctx.rounds - k, ctx.rounds))
    messages = [torch.from_numpy(ctx.messages[r]).to(torch.float64) for r in window]
    shards = [ctx.peer_data([j])[0] for j in range(ctx.n)]

    def jacobian(j: int, w: int, d: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
        hv = ap.hessian_vector(messages[w][j], shards[j], shape, bias)
        return ap.heavy_ball_jacobian(hv, float(t.lr), float(t.momentum), int(t.local_steps),
                                      float(t.weight_decay))(d, b)

    heard = [[[int(i) for i in nb] for nb in in_neighbors(ctx.topology, r)] for r in window]
    return ap.gossip_rollback(ctx.final_params, messages, heard, peer, jacobian, replaying), {"rounds": k}
