"""Probes run against a trained federation and return result records (docs/architecture.md, "Interfaces").

* Unlearning (:mod:`attacks.probes.unlearning`): calibrated first-epoch gradient ascent on the
  output layer (its membership stopping statistic: :mod:`attacks.probes.unlearning_stop`; its
  record: :mod:`attacks.probes.unlearning_trace`), and its
  evaluation (:mod:`attacks.probes.unlearning_eval`: accuracies +
  membership-inference advantage before/after, vs. a model retrained without the peer).
* Membership inference (:mod:`attacks.probes.mia`): loss-threshold (Yeom et al. 2018) and
  offline LiRA (Carlini et al. 2022) with shadow linear heads; :mod:`attacks.probes.membership`
  scores them against nulls (cross-fitted thresholds, permutation and class-matched nulls,
  TPR at fixed low FPR with Clopper–Pearson intervals, online/offline LiRA from shadows).
* Cloning (:mod:`attacks.probes.cloning`, the whole attack, over :mod:`~attacks.probes.cloning_recovery`,
  :mod:`~attacks.probes.cloning_topk`, :mod:`~attacks.probes.cloning_distill`; :mod:`attacks.probes.oracles`,
  :mod:`attacks.probes.bottleneck`): hidden size, layer recovery (least squares, ridge with GCV,
  subspace-projected), logit-bias top-k and top-1 recovery, distillation, output defences
  applied before ranking, repeated-query averaging, cloning curves; bottleneck target heads.

Pure torch; never imports ``fedsim`` or ``strategies``. Records have ``.to_dict()``.
"""

from attacks.probes._head import (
    accuracy,
    ce_gradient,
    ce_losses,
    flatten,
    head_logits,
    logit_confidence,
    train_heads,
    unflatten,
)
from attacks.probes.bottleneck import BottleneckHead, train_bottleneck_head
from attacks.probes.cloning import (
    CloningReport,
    DistillInfo,
    HiddenSizeEstimate,
    LayerRecovery,
    RidgeRecovery,
    SubspaceRecovery,
    TopKRecovery,
    clone_from_oracle,
    cloning_curve,
    distill_from_outputs,
    distill_student,
    hidden_size_from_logits,
    kl_to_target,
    project_logits,
    recover_full_logits_topk,
    recover_layer_known_features,
    recover_layer_ridge,
    recover_layer_unknown_features,
)
from attacks.probes.membership import (
    MembershipTest,
    clopper_pearson,
    crossfit_advantage,
    lira_scores,
    membership_test,
    tpr_at_fixed_fpr,
    train_heads_sgd,
)
from attacks.probes.mia import (
    MIAResult,
    ShadowSet,
    best_advantage,
    lira_offline_mia,
    lira_offline_scores,
    loss_threshold_mia,
    loss_threshold_result,
    roc_auc,
    tpr_at_fpr,
    train_shadow_heads,
)
from attacks.probes.oracles import (
    AveragingOracle,
    CountingOracle,
    HeadOracle,
    LabelOnlyOracle,
    ModelOracle,
    NoisyOracle,
    Oracle,
    RoundedOracle,
    dense_from_topk,
    with_gaussian_noise,
    with_rounding,
    with_top1,
)
from attacks.probes.retrain_gap import (
    bias_only,
    finetune_on_retain,
    function_gap,
    gap_closed,
    hessian_vector,
    kl_and_disagreement,
    newton_removal,
)
from attacks.probes.rollback import gossip_rollback, heavy_ball_jacobian
from attacks.probes.unlearning import unlearn_gradient_ascent
from attacks.probes.unlearning_eval import ModelEvaluation, UnlearningReport, evaluate_model, evaluate_unlearning
from attacks.probes.unlearning_stop import grouped_membership_statistic, membership_statistic, stopping_statistic
from attacks.probes.unlearning_trace import UnlearningTrace

__all__ = [
    "accuracy", "bias_only", "ce_gradient", "finetune_on_retain", "function_gap", "gap_closed",
    "kl_and_disagreement", "grouped_membership_statistic", "membership_statistic", "newton_removal",
    "stopping_statistic",
    "gossip_rollback", "heavy_ball_jacobian", "hessian_vector",
    "MembershipTest", "ce_losses", "clopper_pearson", "crossfit_advantage", "lira_scores", "logit_confidence",
    "membership_test", "tpr_at_fixed_fpr", "train_heads_sgd",
    "AveragingOracle", "BottleneckHead", "ModelOracle", "RidgeRecovery", "kl_to_target", "project_logits",
    "recover_layer_ridge", "train_bottleneck_head",
    "CloningReport", "CountingOracle", "DistillInfo", "HeadOracle", "HiddenSizeEstimate",
    "LabelOnlyOracle", "LayerRecovery", "MIAResult", "ModelEvaluation", "NoisyOracle", "Oracle",
    "RoundedOracle", "ShadowSet", "SubspaceRecovery", "TopKRecovery", "UnlearningReport",
    "UnlearningTrace", "best_advantage", "clone_from_oracle", "cloning_curve", "dense_from_topk",
    "distill_from_outputs", "distill_student", "evaluate_model", "evaluate_unlearning", "flatten",
    "head_logits", "hidden_size_from_logits", "lira_offline_mia", "lira_offline_scores",
    "loss_threshold_mia", "loss_threshold_result", "recover_full_logits_topk",
    "recover_layer_known_features", "recover_layer_unknown_features", "roc_auc", "tpr_at_fpr",
    "train_heads", "train_shadow_heads", "unflatten", "unlearn_gradient_ascent", "with_gaussian_noise",
    "with_rounding", "with_top1",
]
