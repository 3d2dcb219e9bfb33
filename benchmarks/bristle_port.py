"""PORT (not fedsim's implementation): the authors' Bristle run loop, line by line, in numpy.

An independent transcription of the per-iteration logic of jverbraeken/trustchain-superapp at
commit f1fb8fb5 (2021-04-12, "Increase 1 to 2 samples": the code that wrote the logs
``fedml/evaluations/emulator-55*/evaluations/evaluation-simulated-2021-04-12_23.4*.csv``), folder
``fedml/src/main/java/nl/tudelft/trustchain/fedml/``. It shares nothing with ``strategies/bristle.py``
or ``fedsim.heads``/``fedsim.peers``: only the *data* comes from fedsim (the frozen-backbone
features and the partition of a scenario, via ``fedsim.prepare.prepare``), so the port and fedsim's
``bristle`` can be compared on the same features, split and seed. It exists to answer issue 14's
question "is the gap to the authors' logs fedsim's code or fedsim's backbone?".

What is ported, with the authors' file:line references (at f1fb8fb5):

* ``ai/Runner.kt:38-105`` the network: a frozen backbone, then ``OutputLayer`` NEGATIVELOGLIKELIHOOD
  + SOFTMAX, ``hasBias(false)``; ``.l2(5e-3)``, ``Adam(1e-3)`` (``Types.kt:157,166,198``).
  ``ai/Node.kt:101`` ``network.outputLayer.params().muli(0)``: ``W [nIn, nOut]`` starts at 0.
* DL4J 1.0.0-beta7 (``fedml/build.gradle:60``) ``MultiLayerNetwork.fit(DataSet)``: one step. The loss
  gradient ``Xᵀ(softmax(XW) − Y)`` is divided by the minibatch size (``BaseMultiLayerUpdater.update``:
  ``divideByMinibatch`` first), then L2 is added *unscaled*, before the updater
  (``L2Regularization``: ``ApplyStep.BEFORE_UPDATER``, ``grad += l2·W``), then Adam
  (``AdamUpdater.applyUpdater``: ``m ← β1 m + (1−β1) g``, ``v ← β2 v + (1−β2) g²``,
  ``α_t = lr·√(1−β2^(t+1))/(1−β1^(t+1))``, ``W −= α_t·m/(√v + ε)``, ``t`` = the network's number of
  fits so far, ε = 1e-8).
* ``ai/Node.kt:226-235`` ``fitNetwork``: ``iterTrain.next()``; when the iterator is exhausted the
  custom fetcher throws (``CustomMnistDataFetcher.kt:108`` ``check(hasMore())``), the node resets
  (reshuffles) the iterator and **does not train that iteration**. With 2 samples of 2 classes
  (4 samples) and batch 5 a peer trains on its 4 samples at iterations 0, 2, 4, … only; with 4
  classes (8 samples): batches of 5 and 3, then a skipped iteration.
* ``ai/Node.kt:136-185`` ``performIteration`` in this order: ``newParams = TW``, ``gradient =
  oldParams − newParams``; a benign node integrates when it was sent models
  (``potentiallyIntegrateParameters``, ``Node.kt:248-277``): ``CW ← Bristle(...)``, then every class
  column loses its mean over the features (``Node.kt:266-268``); ``resetTW`` (TW ← CW),
  ``oldParams ← TW``, fit, ``updateCW`` (own classes' columns TW → CW), share ``CW`` (every
  iteration, ``iterationsBeforeSending = 1``), ``potentiallyEvaluate`` (every 10th iteration:
  **TW ← CW**, then accuracy of the network with W = CW on the full test set,
  ``EvaluationProcessor.evaluate``: DL4J ``Evaluation`` accuracy, argmax over the 10 outputs).
* ``ai/SimulatedRunner.kt:104-117``: each iteration every node first applies the messages received in
  the previous iteration (``applyNetworkBuffers``), then the nodes run in id order; a message sent
  now arrives next iteration. ``SimulatedRunner.kt:180-191`` ``shareModel`` (pattern ``all``): a
  Bristle node sends only to the nodes in its ``countPerPeer`` (PSI-CA count >= 1).
* ``PSI_CA.kt:14,52-68``: ``countPerPeer[j] = |labels_i ∩ labels_j|`` when >= ``MIN_PSI_CA = 1``
  (the SRA-encrypted Bloom-filter protocol computes exactly this set-intersection size; Guava's
  Bloom filter with 1,000 expected insertions and <= 10 inserted is treated as exact here).
  ``labels`` = the classes with samples (``CustomMnistDataSetIterator.getLabels``), sorted.
* ``ai/gar/Bristle.kt:33-130`` ``integrateParameters`` and its helpers (``:136-385``): distances
  and the 20 nearest + 5 random candidates (all of them when <= 20 arrive: the padding with up to
  20 recent models never yields candidates, keys >= 1,000,000 are filtered), per-class recall on
  the local test set **indexed by the position of the class in the node's sorted ``labels``**
  (``:155-170``), ``getBestPerformingClassesPerPeer`` (``:182-201``: all positions when the count
  equals ``|labels|``, else the count best positions by the candidate's recall, stable descending
  sort), weighted diffs ×10 (``:203-215``), the sequential-attack penalty over *all* earlier
  candidates in ascending id order (``:217-235``), scores (``:237-257``: ``d^(3+my)`` if better,
  else ``−d^(4+my)·(1+penalty)``, bounded at −100 or not), certainty ``max(0, mean − population
  std)`` over the selected positions (``:322-334``), weights ``max(0, 10·sigmoid(s/100) − 4)·
  certainty`` (``:273-291``, ``:336-350``), ``weightedAverage`` with the own model at weight 1
  (``:293-320``) and ``incorporateForeignWeights`` (``:352-375``).
* Data as in ``CustomMnistManager``/``Runner.getDataSetIterators``: the labels of a
  ``LABEL_FLIP_ALL`` node are the fedsim scenario's ``label_shift`` (shift 9: ``y → y − 1``, the code's
  mapping); the local test (validation) set is fedsim's validation split of the node.

Departures, all forced by running on fedsim's data and none in the logic: the samples, the
features (fedsim's backbone, not the authors' EMNIST-letters CNN), the 2,000-image test set
(the authors': 10 per class), Kotlin's ``Random`` replaced by numpy's (iterator shuffles, the
exploration draw, which never happens here), float64 everywhere (DL4J: float32 weights).

``--ablate`` switches one documented part of the port at a time, to locate a difference
(``train_every_iteration``: fit a batch of 5 drawn with replacement at every iteration, as fedsim
does; ``no_eval_copy``: drop the TW ← CW side effect of evaluation; ``eval_after_integration``:
report the accuracy of CW after the next integration, as fedsim does).

Run (``--scenario`` any windows scenario; prints the mean honest accuracy at iterations 0, 10, …)::

    PYTHONPATH=. python benchmarks/bristle_port.py --scenario scenarios/bristle-repro/windows2.yaml --seeds 0,1,2
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import _cli  # benchmarks/ is on sys.path when run as a script
import numpy as np
import yaml

NUM_MODELS_EXPLOITATION = 20  # Bristle.kt:12
NUM_MODELS_EXPLORATION = 5  # Bristle.kt:13
MIN_NUMBER_MODELS_FOR_DISTANCE_SCREENING = 20  # Bristle.kt:14
SIZE_RECENT_OTHER_MODELS = 20  # Node.kt:21
MIN_PSI_CA = 1  # PSI_CA.kt:14
ABLATIONS = ("train_every_iteration", "no_eval_copy", "eval_after_integration")


# ---------------------------------------------------------------------------------------- DL4J parts
@dataclass
class OutputLayer:
    """DL4J ``OutputLayer`` (NLL + softmax, no bias) with ``.l2`` and the ``Adam`` updater."""

    w: np.ndarray  # [nIn, nOut]: DL4J's layout; a class is a column
    lr: float
    l2: float
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    m: np.ndarray = field(init=False)
    v: np.ndarray = field(init=False)
    iteration: int = 0  # MultiLayerNetwork's iteration count: fits so far

    def __post_init__(self) -> None:
        self.m, self.v = np.zeros_like(self.w), np.zeros_like(self.w)

    def fit(self, x: np.ndarray, y: np.ndarray) -> None:
        z = x @ self.w
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        p[np.arange(len(y)), y] -= 1.0  # LossMCXENT with softmax: output − labels
        g = x.T @ p / len(y)  # divideByMinibatch, before regularization
        g = g + self.l2 * self.w  # L2Regularization, BEFORE_UPDATER
        self.m = self.beta1 * self.m + (1 - self.beta1) * g  # AdamUpdater.applyUpdater
        self.v = self.beta2 * self.v + (1 - self.beta2) * g * g
        t = self.iteration
        alphat = self.lr * math.sqrt(1 - self.beta2 ** (t + 1)) / (1 - self.beta1 ** (t + 1))
        self.w = self.w - alphat * self.m / (np.sqrt(self.v) + self.eps)
        self.iteration += 1


def predict(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """DL4J ``Evaluation``: argmax over the outputs (the first on ties, as ND4J's argmax)."""
    return np.argmax(x @ w, axis=1)


def recall_per_label(w: np.ndarray, x: np.ndarray, y: np.ndarray, labels: list[int]) -> np.ndarray:
    """``Bristle.calculateRecallPerClass`` (Bristle.kt:155-170): recall of each of the node's labels,
    in the order of ``labels`` (DL4J ``Evaluation.recall``: tp / (tp + fn), 0 when undefined)."""
    pred = predict(w, x)
    out = np.zeros(len(labels))
    for k, c in enumerate(labels):
        n = int((y == c).sum())
        out[k] = float(((pred == c) & (y == c)).sum()) / n if n else 0.0
    return out


class TrainIterator:
    """``CustomMnistDataSetIterator`` over a node's training set: shuffled order, batches of ``batch``
    without replacement; ``next`` past the end raises (``CustomMnistDataFetcher.fetch``'s check)."""

    def __init__(self, n: int, batch: int, rng: np.random.Generator) -> None:
        self.n, self.batch, self.rng = n, batch, rng
        self.order = np.arange(n)
        self.reset()

    def reset(self) -> None:  # CustomBaseDataFetcher.reset
        self.cursor = 0
        self.rng.shuffle(self.order)

    def next(self) -> np.ndarray:
        if self.cursor >= self.n:
            raise StopIteration
        idx = self.order[self.cursor : self.cursor + self.batch]
        self.cursor += len(idx)
        return idx


# ---------------------------------------------------------------------------------------- Bristle.kt
def _sigmoid_weight(score: float, certainty: float) -> float:
    e = -score / 100
    s = 1 / (1 + (math.exp(e) if e < 700 else math.inf))  # sigmoid (Kotlin's exp overflows to Infinity)
    s *= 10  # 0 -> 10
    s -= 4  # -4 -> 6
    s = max(0.0, s)  # no negative weights
    return s * certainty


def _std(a: np.ndarray) -> float:  # Bristle.kt:381-385: population std
    avg = a.mean()
    return math.sqrt(float(((a - avg) ** 2).sum()) / len(a))


def bristle_integrate(
    new_model: np.ndarray,
    others: dict[int, np.ndarray],
    val_x: np.ndarray,
    val_y: np.ndarray,
    labels: list[int],
    count_per_peer: dict[int, int],
    rng: np.random.Generator,
) -> np.ndarray:
    """``Bristle.integrateParameters`` (Bristle.kt:33-130) on ``W [d, C]`` matrices."""
    # getDistances (:136-153): the recent-model padding has keys >= 1,000,000 and is filtered below
    dist = sorted(others, key=lambda j: float(np.linalg.norm(others[j] - new_model)))
    exploitation = dist[:NUM_MODELS_EXPLOITATION]
    rest = dist[NUM_MODELS_EXPLOITATION:]
    exploration = [rest[i] for i in rng.permutation(len(rest))[:NUM_MODELS_EXPLORATION]]
    combined = {j: others[j] for j in exploitation + exploration}
    peers = sorted(combined)
    my = recall_per_label(new_model, val_x, val_y, labels)  # :84
    rec = {j: recall_per_label(combined[j], val_x, val_y, labels) for j in peers}  # :87
    # getBestPerformingClassesPerPeer (:182-201): positions into labels
    selected: dict[int, list[int]] = {}
    for j in peers:
        size = count_per_peer.get(j, len(my))
        if size == len(rec[j]):
            selected[j] = list(range(size))
        else:
            order = sorted(range(len(rec[j])), key=lambda k: -rec[j][k])  # stable, descending
            selected[j] = order[:size]
    diffs = {j: {c: abs(my[c] - rec[j][c]) * 10 for c in selected[j]} for j in peers}  # :203-215
    penalties: dict[int, dict[int, float]] = {}  # :217-235
    previous: list[np.ndarray] = []
    for j in peers:
        penalties[j] = {c: sum(max(0.0, 2 * (my[c] - r[c])) for r in previous) for c in selected[j]}
        previous.append(rec[j])

    def scores(bounded: bool) -> dict[int, dict[int, float]]:  # :237-257
        out: dict[int, dict[int, float]] = {}
        for j in peers:
            out[j] = {}
            for c in selected[j]:
                m, pr, d = my[c], rec[j][c], diffs[j][c]
                s = d ** (3 + m) if pr > m else -1.0 * d ** (4 + m) * (1 + penalties[j][c])
                out[j][c] = max(-100.0, s) if bounded else s
        return out

    bounded = scores(True)
    certainty = {}  # getCertaintyPerSelectedPeer (:322-334)
    for j in peers:
        r = rec[j][selected[j]]
        certainty[j] = max(0.0, float(r.mean()) - _std(r))
    weights = {j: {c: _sigmoid_weight(bounded[j][c], certainty[j]) for c in selected[j]} for j in peers}  # :273-291
    # weightedAverage (:293-320)
    arr = new_model.copy()
    total = np.ones(new_model.shape[1])
    for j in peers:
        for c, wt in weights[j].items():
            cls = labels[c]
            arr[:, cls] = arr[:, cls] + combined[j][:, cls] * wt
            total[cls] += wt
    for i, t in enumerate(total):
        if t != 1.0:
            arr[:, i] = arr[:, i] / t
    unbounded = scores(False)  # :119
    wpeer = {j: _sigmoid_weight(sum(unbounded[j].values()), certainty[j]) for j in peers}  # :336-350
    # incorporateForeignWeights (:352-375)
    out = arr.copy()
    foreign = [c for c in range(new_model.shape[1]) if c not in labels]
    for j in peers:
        for c in foreign:
            out[:, c] = out[:, c] + combined[j][:, c] * wpeer[j]
    tw = sum(wpeer.values()) + 1
    for c in foreign:
        out[:, c] = out[:, c] / tw
    return out


# ---------------------------------------------------------------------------------------- Node.kt
class Node:
    def __init__(self, idx: int, x: np.ndarray, y: np.ndarray, vx: np.ndarray, vy: np.ndarray, benign: bool,
                 num_classes: int, lr: float, l2: float, batch: int, seed: int) -> None:
        self.idx, self.x, self.y, self.vx, self.vy, self.benign = idx, x, y, vx, vy, benign
        self.labels = sorted({int(c) for c in y})  # iterTrain.labels: the classes with samples
        self.used = self.labels  # usedClassIndices
        self.net = OutputLayer(np.zeros((x.shape[1], num_classes)), lr, l2)  # Node.kt:101
        self.cw = self.net.w.copy()  # Node.kt:103
        self.old_params = self.net.w.copy()  # Node.kt:106
        self.rng = np.random.default_rng([seed, idx])
        self.iter_train = TrainIterator(len(y), batch, self.rng)
        self.batch = batch
        self.buffer: dict[int, np.ndarray] = {}
        self.temp: dict[int, np.ndarray] = {}
        self.count_per_peer: dict[int, int] = {}
        self.pending_eval: np.ndarray | None = None

    def perform_iteration(self, it: int, nodes: list[Node], ablate: set[str]) -> None:
        new_params = self.net.w.copy()  # Node.kt:137
        gradient = self.old_params - new_params  # :138
        if self.benign and self.buffer:  # :148-154, potentiallyIntegrateParameters :248-277
            avg = bristle_integrate(self.old_params - gradient, self.buffer, self.vx, self.vy, self.labels,
                                    self.count_per_peer, self.rng)
            self.cw = avg - avg.mean(axis=0, keepdims=True)  # :262-268: every column minus its mean
        self.buffer = {}  # :155
        self.net.w = self.cw.copy()  # resetTW :194-200
        self.old_params = self.net.w.copy()  # :163
        if "train_every_iteration" in ablate:
            self.net.fit(*self._draw_with_replacement())
        else:
            try:  # fitNetwork :226-235
                idx = self.iter_train.next()
                self.net.fit(self.x[idx], self.y[idx])
            except StopIteration:
                self.iter_train.reset()
        for c in self.used:  # updateCW :187-192
            self.cw[:, c] = self.net.w[:, c]
        msg = self.cw.copy()  # shareModel, SimulatedRunner.kt:180-191 (pattern all, Bristle: PSI-CA peers)
        for n in nodes:
            if n.idx != self.idx and n.idx in self.count_per_peer:
                n.temp[self.idx] = msg
        if it % 10 == 0 and "no_eval_copy" not in ablate:  # potentiallyEvaluate :279-310: TW <- CW
            self.net.w = self.cw.copy()

    def _draw_with_replacement(self) -> tuple[np.ndarray, np.ndarray]:
        idx = self.rng.integers(len(self.y), size=self.batch)
        return self.x[idx], self.y[idx]


def psi_ca(nodes: list[Node]) -> None:
    """``SimulatedRunner.getCountPerPeers`` / ``PSI_CA.clientReceivesServerResponses``."""
    for a in nodes:
        a.count_per_peer = {}
        for b in nodes:
            if b.idx != a.idx:
                k = len(set(a.labels) & set(b.labels))
                if k >= MIN_PSI_CA:
                    a.count_per_peer[b.idx] = k


def accuracy(w: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    return float((predict(w, x) == y).mean())


def run_port(
    scenario: str, seed: int, iterations: int, ablate: set[str] | None = None, overrides: dict | None = None
) -> dict[int, float]:
    """The port on the data of a fedsim scenario at ``seed`` (``overrides``: dotted scenario keys,
    as ``fedsim run --set``): mean honest test accuracy by iteration (0, 10, …, as the authors log,
    plus the last)."""
    from fedsim import scenario as fsc
    from fedsim.prepare import prepare

    ablate = ablate or set()
    sc = fsc.load(scenario, {**(overrides or {}), "seed": seed})
    prep = prepare(sc)
    feats = prep.features
    xtr, ytr = feats.x_train.astype(np.float64), feats.y_train.astype(np.int64)
    xte, yte = feats.x_test.astype(np.float64), feats.y_test.astype(np.int64)
    train = [t for s in prep.setups for t in s.train_idx]
    val = [v for s in prep.setups for v in s.val_idx]
    attack = sc.peers.attack
    if attack.name not in ("label_shift", "none", "crash"):
        raise ValueError(f"bristle_port: attack {attack.name!r} is not ported (label_shift, none, crash)")
    shift = int((attack.params or {}).get("shift", 1)) if attack.name == "label_shift" else 0
    c = feats.num_classes
    t = sc.training
    nodes = []
    for i, (ti, vi) in enumerate(zip(train, val, strict=True)):
        byz = bool(prep.byzantine[i])
        y, vy = ytr[ti], ytr[vi]
        if byz:
            y, vy = (y + shift) % c, (vy + shift) % c  # LABEL_FLIP_ALL (shift 9: y -> y - 1)
        nodes.append(Node(i, xtr[ti], y, xtr[vi], vy, not byz, c, t.lr, t.weight_decay, t.batch_size, seed))
    psi_ca(nodes)
    silent = attack.name == "crash"
    honest = [n for n in nodes if n.benign]
    out: dict[int, float] = {}
    for it in range(iterations):
        for n in nodes:  # applyNetworkBuffers
            n.buffer = {k: v for k, v in n.temp.items() if not (silent and not nodes[k].benign)}
            n.temp = {}
        for n in nodes:
            n.perform_iteration(it, nodes, ablate)
        if it % 10 == 0 or it == iterations - 1:
            if "eval_after_integration" in ablate:
                continue
            out[it] = float(np.mean([accuracy(n.cw, xte, yte) for n in honest]))
    if "eval_after_integration" in ablate:  # one more integration, no training: fedsim's order
        for n in nodes:
            n.buffer, n.temp = n.temp, {}
        for n in honest:
            if n.buffer:
                avg = bristle_integrate(n.net.w, n.buffer, n.vx, n.vy, n.labels, n.count_per_peer, n.rng)
                n.cw = avg - avg.mean(axis=0, keepdims=True)
        out[iterations - 1] = float(np.mean([accuracy(n.cw, xte, yte) for n in honest]))
    return out


def main() -> None:
    ap = _cli.parser(__doc__)
    ap.add_argument("--scenario", default="scenarios/bristle-repro/windows2.yaml")
    ap.add_argument("--seeds", type=_cli.indices, default="0,1,2")
    ap.add_argument("--iterations", type=_cli.count, default=101,
                    help="101: the authors' 'iteration 100' row is logged after 101 iterations")
    ap.add_argument("--set", action="append", default=[], type=_cli.key_value, metavar="KEY=VALUE",
                    help="scenario override, as fedsim run --set (YAML value)")
    ap.add_argument("--ablate", default="", help=f"comma-separated, of {', '.join(ABLATIONS)}")
    a = ap.parse_args()
    ablate = {s for s in a.ablate.split(",") if s}
    bad = ablate - set(ABLATIONS)
    if bad:
        ap.error(f"argument --ablate: unknown {sorted(bad)}; choose from {', '.join(ABLATIONS)}")
    overrides = {}
    for kv in a.set:
        k, _, v = kv.partition("=")
        overrides[k] = yaml.safe_load(v)
    finals = []
    for s in a.seeds:
        try:
            res = run_port(a.scenario, s, a.iterations, ablate, overrides)
        except (ValueError, OSError) as e:  # a scenario error, a missing backbone file: one line
            raise SystemExit(f"bristle_port: {e}") from None
        finals.append(res[max(res)])
        print(f"seed {s}: " + " ".join(f"{k}:{100 * v:.2f}" for k, v in sorted(res.items())))
    f = np.array(finals) * 100
    sd = f.std(ddof=1) if len(f) > 1 else 0.0
    last = a.iterations - 1
    print(f"final (iteration {last}) mean honest accuracy: {f.mean():.2f} +- {sd:.2f} % over {len(f)} seeds")


if __name__ == "__main__":
    main()
