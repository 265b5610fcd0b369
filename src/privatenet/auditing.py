"""The leakage audit: the worst case over an attacker zoo (docs/design.md §5).

One adversary at chance proves nothing; an attacker who retrains picks the strongest tool. And an
attacker in the world has their own labelled faces: they never see the rows the defence was
fitted on. So every attacker here trains, tunes and standardises on **attacker rows** and is
scored once on **scoring rows**, and neither may be a *defender row*: a row that any part of the
defence saw (the network's training rows, the known adversary's, an eraser's, a regularizer's
batches). An eraser fitted on wide features from few rows makes its own rows look clean and
does little on fresh ones; an audit on defender rows measures that overfit, not privacy.

Two protocols:

* **fresh attacker rows** (``attacker=``, e.g. a held-out attacker split): choices on a
  validation part of the attacker rows, refit on all of them, scored on the scoring rows;
* **cross-fitting** (no attacker rows): stratified K folds of the scoring rows, each fold scored
  by attackers trained and tuned on the other folds only. The attacker then has fewer rows than
  a real one could collect: the report says it is *data-limited*.

For every attacker the report gives both leakage figures, accuracy-based
``(acc - majority) / (1 - majority)`` and balanced ``(bal - 1/K) / (1 - 1/K)``, so class imbalance
cannot hide a leak; the worst case (the headline) is the larger of the two over the zoo. A
learning curve repeats the zoo on 25 % and 50 % of the attacker rows: when the worst case still
rises from 50 % to 100 %, the figure is a lower bound and the report says so. An online
description length (Voita & Titov 2020) is given relative to the code of the labels' own prior
(1 = the features say nothing, at any class balance). Controls (what the task output alone
reveals: the floor; a randomly initialised network; the image) go through the same protocol. An
optional *in-sample* column trains the zoo on defender rows: labelled as such, never the headline.

The zoo (scikit-learn): ``logistic`` (L2 logistic regression, C swept), ``knn`` (cosine k-nearest
neighbours, k swept), ``boosted_trees`` (HistGradientBoosting, early stopping), ``mlp`` (one
hidden layer, early stopping, L2 swept), plus torch heads the caller passes (the model's adversary
retrained, a deeper conv head). ``full`` is the headline zoo, ``quick`` a labelled preview; a
family whose input would be too wide reads the spatially averaged map instead, or is skipped with
the reason in the report.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import numpy as np
import torch

from privatenet.checks import is_int
from privatenet.data.base import MISSING
from privatenet.errors import PrivatenetError, SettingError
from privatenet.metrics import leakage
from privatenet.settings import setting
from privatenet.train.config import TrainConfig, check_seeds
from privatenet.train.loop import Callbacks, fit_adversary, predict_features

__all__ = ["ATTACKERS", "AUDIT_PROTOCOL", "CURVE", "ZOOS", "AuditConfig", "audit",
           "balanced_leakage", "check_audit_rows", "online_codelength"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Attacker:
    """One attacker family: ``build(params, seed)`` gives a scikit-learn classifier, ``grid``
    the parameter choices tried on the validation part, ``max_dim`` the widest input it takes
    (wider maps are averaged over space first)."""

    build: Callable[[dict, int], object]
    grid: tuple[dict, ...]
    max_dim: int
    scale: bool = True
    linear: bool = False  # an L2-penalised linear model (fitted in the train rows' span)


def _logistic(p: dict, seed: int):
    from sklearn.linear_model import LogisticRegression

    # tol 1e-3: on 8,192-wide maps the default 1e-4 costs 2-5x the time for the same test
    # accuracy (measured on the demo's backbone features: 74.2 % against 73.8 %).
    return LogisticRegression(C=p["C"], tol=1e-3, max_iter=200, random_state=seed)


def _knn(p: dict, seed: int):
    from sklearn.neighbors import KNeighborsClassifier

    return KNeighborsClassifier(n_neighbors=p["k"], metric="cosine")


def _boosted(p: dict, seed: int):
    from sklearn.ensemble import HistGradientBoostingClassifier

    return HistGradientBoostingClassifier(learning_rate=p["lr"], max_iter=200,
                                          early_stopping=True, random_state=seed)


def _mlp(p: dict, seed: int):
    from sklearn.neural_network import MLPClassifier

    return MLPClassifier(hidden_layer_sizes=(256,), alpha=p["alpha"], early_stopping=True,
                         max_iter=200, random_state=seed)


#: The attacker families, by name.
ATTACKERS: dict[str, Attacker] = {
    "logistic": Attacker(_logistic, ({"C": 0.01}, {"C": 0.1}, {"C": 1.0}, {"C": 10.0}),
                         max_dim=65_536, linear=True),
    "knn": Attacker(_knn, ({"k": 5}, {"k": 15}, {"k": 45}), max_dim=65_536),
    "boosted_trees": Attacker(_boosted, ({"lr": 0.1},), max_dim=1_024, scale=False),
    "mlp": Attacker(_mlp, ({"alpha": 1e-4}, {"alpha": 1e-2}), max_dim=16_384),
}
#: ``full``: the headline zoo; ``quick``: the cheap families, a labelled preview.
ZOOS: dict[str, tuple[str, ...]] = {
    "quick": ("logistic", "knn", "boosted_trees"),
    "full": ("logistic", "knn", "boosted_trees", "mlp"),
}


def _as_array(x, what: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().float().numpy()
    x = np.asarray(x)
    if x.dtype == np.float64:  # features are float32; half the memory and time
        x = x.astype(np.float32)
    if x.ndim < 1:
        raise PrivatenetError(f"{what} must be an array with one row per item")
    return x


def _views(features: np.ndarray) -> dict[str, np.ndarray]:
    """``flat`` (every value) and, for maps (N, C, H, W), ``pooled`` (mean over space)."""
    views = {"flat": features.reshape(features.shape[0], -1)}
    if features.ndim >= 4:
        views["pooled"] = features.mean(axis=tuple(range(2, features.ndim)))
    return views


def _fit(family: Attacker, params: dict, seed: int, x: np.ndarray, y: np.ndarray,
         previous=None):
    """``family``'s model with ``params`` fitted on ``x``; a bare linear model ``previous``
    fitted on the same rows is refitted from its weights (the C sweep runs from strong to weak
    regularisation, so each fit starts near its optimum: fewer solver iterations)."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if len(np.unique(y)) < 2:  # a small fit part of one class: answer that class
        from sklearn.dummy import DummyClassifier

        return DummyClassifier(strategy="most_frequent").fit(x, y)
    if previous is not None and not family.scale:
        model = previous.set_params(warm_start=True, **params)
    else:
        model = family.build(params, seed)
    if model.get_params().get("early_stopping") and _stratify(
            y, model.get_params()["validation_fraction"] or 0.1) is None:
        # Early stopping holds out a stratified part of the rows, which a class of one row
        # (or too few rows for every class) cannot give: train for the full budget instead.
        model.set_params(early_stopping=False)
    if family.scale:
        model = make_pipeline(StandardScaler(), model)
    with warnings.catch_warnings():
        # Convergence warnings on tiny or separable data are not the user's to act on.
        warnings.simplefilter("ignore")
        model.fit(x, y)
    return model


#: Shares of the attacker rows of the learning curve (the full set is always run).
CURVE = (0.25, 0.5)
#: The audit's protocol, part of every audit's fingerprint and stage key: a change of protocol
#: recomputes cached audits instead of mixing figures of two protocols.
AUDIT_PROTOCOL = "fresh-rows-1"
#: Fewest labelled rows an attacker trains on (and the scoring rows hold).
MIN_ROWS = 20


def _split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified fit/validation indices of the attacker rows (validation share ``fraction``)."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    fit, val = train_test_split(idx, test_size=fraction, random_state=seed,
                                stratify=_stratify(labels, fraction))
    return fit, val


def _stratify(labels: np.ndarray, share: float):
    """``labels`` when a stratified split into ``share`` and the rest can hold every class
    (each class twice, each side at least one row per class), else ``None`` (a plain split)."""
    counts = np.bincount(labels)
    k = int((counts > 0).sum())
    part = int(np.ceil(share * len(labels)))
    ok = counts[counts > 0].min() >= 2 and min(part, len(labels) - part) >= k
    return labels if ok else None


def _subsample(idx: np.ndarray, labels: np.ndarray, share: float, seed: int) -> np.ndarray:
    """A stratified ``share`` of the rows ``idx`` (labels ``labels[idx]``); all for 1.0."""
    if share >= 1.0:
        return idx
    from sklearn.model_selection import train_test_split

    keep, _ = train_test_split(idx, train_size=share, random_state=seed,
                               stratify=_stratify(labels[idx], share))
    return np.sort(keep)


def _binary_auroc(y: np.ndarray, proba: np.ndarray | None) -> float | None:
    """AUROC of the positive class's score for a binary attribute, else ``None``."""
    from sklearn.metrics import roc_auc_score

    if proba is None or len(np.unique(y)) != 2 or proba.shape[1] != 2:
        return None
    return float(roc_auc_score(y, proba[:, 1]))


def _full_proba(model, x: np.ndarray, num_classes: int) -> np.ndarray:
    """``predict_proba`` with one column per class 0..K-1 (classes absent from the attacker's
    rows get probability 0)."""
    proba = np.zeros((len(x), num_classes))
    proba[:, np.asarray(model.classes_, dtype=np.int64)] = model.predict_proba(x)
    return proba


#: A predictor trains on (x, y) of attacker rows and returns (predictions, probabilities, the
#: choices it made) for the scoring rows x_s: ``predict(x, y, x_s, seed)``.
Predictor = Callable[[np.ndarray, np.ndarray, np.ndarray, int], tuple]


def _sklearn_predictor(name: str, num_classes: int, val_fraction: float) -> Predictor:
    """Attacker family ``name``: its choice made on a validation part of the attacker rows,
    refitted on all of them."""
    def predict(x, y, xs, seed):
        family = ATTACKERS[name]
        if family.linear and x.shape[1] > x.shape[0]:
            # Wider than the attacker rows are many: the same fits, in fewer dimensions. The
            # standardisation uses the attacker rows (no labels) for every fit.
            x, xs = _train_row_basis(x, xs)
            family = replace(family, scale=False)
        best = family.grid[0]
        if len(family.grid) > 1:
            fit_idx, val_idx = _split(y, val_fraction, seed)
            best_acc, previous = -1.0, None
            for params in family.grid:
                if name == "knn" and params["k"] > len(fit_idx):
                    continue
                m = _fit(family, params, seed, x[fit_idx], y[fit_idx], previous)
                previous = m if family.linear else None
                acc = float((m.predict(x[val_idx]) == y[val_idx]).mean())
                if acc > best_acc:
                    best, best_acc = params, acc
        if name == "knn":
            best = {"k": min(best["k"], len(y))}
        model = _fit(family, best, seed, x, y)
        return model.predict(xs), _full_proba(model, xs, num_classes), best
    return predict


def _head_predictor(build: Callable[[tuple, int], torch.nn.Module], num_classes: int,
                    val_fraction: float, epochs: tuple[int, ...], device: str) -> Predictor:
    """A torch head (e.g. the paper's adversary retrained) as an attacker: the epoch count is
    chosen on a validation part of the attacker rows (accuracy after each epoch of
    ``epochs``), then the head is retrained from the same initialisation on all of them."""
    def predict(x, y, xs, seed):
        ftr, fte, ltr = torch.from_numpy(x).float(), torch.from_numpy(xs).float(), \
            torch.from_numpy(y)
        fit_idx, val_idx = _split(y, val_fraction, seed)
        config = TrainConfig(epochs=max(epochs), batch_size=128, seed=seed, augment=False,
                             device=device)
        torch.manual_seed(seed)
        head = build(tuple(ftr.shape[1:]), num_classes)
        scores: dict[int, float] = {}

        def score(record):
            if record["epoch"] in epochs:
                pred = predict_features(head, ftr[val_idx], device=device).numpy()
                scores[record["epoch"]] = float((pred == y[val_idx]).mean())

        fit_adversary(head, ftr[fit_idx], ltr[fit_idx], config=config,
                      callbacks=Callbacks(on_epoch=score))
        best = max(epochs, key=lambda e: (scores[e], -e))
        torch.manual_seed(seed)
        head = build(tuple(ftr.shape[1:]), num_classes)
        fit_adversary(head, ftr, ltr, config=config, epochs=best)
        head.eval()
        with torch.no_grad():
            proba = torch.cat([head(fte[i:i + 512].to(device)).softmax(1).cpu()
                               for i in range(0, len(fte), 512)]).numpy()
        return proba.argmax(1), proba, {"epochs": best}
    return predict


def _predictions(predict: Predictor, xa: np.ndarray | None, ya: np.ndarray | None,
                 xs: np.ndarray, ys: np.ndarray, *, folds: int, share: float, seed: int,
                 num_classes: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """An attacker's predictions for every scoring row: trained on ``share`` of the attacker
    rows, or (``xa is None``) cross-fitted over ``folds`` stratified folds of the scoring rows,
    each fold predicted by an attacker that never saw it."""
    from sklearn.model_selection import StratifiedKFold

    if xa is not None:
        idx = _subsample(np.arange(len(ya)), ya, share, seed)
        pred, proba, chosen = predict(xa[idx], ya[idx], xs, seed)
        return np.asarray(pred), proba, chosen
    pred = np.empty(len(ys), dtype=np.int64)
    proba = np.zeros((len(ys), num_classes))
    chosen = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "the least populated class has only n members"
        splits = list(StratifiedKFold(n_splits=folds, shuffle=True,
                                      random_state=seed).split(np.zeros(len(ys)), ys))
    for train_idx, fold_idx in splits:
        train_idx = _subsample(train_idx, ys, share, seed)
        p, pr, c = predict(xs[train_idx], ys[train_idx], xs[fold_idx], seed)
        pred[fold_idx], proba[fold_idx] = p, pr
        chosen = c if chosen is None else chosen
    return pred, proba, chosen


def balanced_leakage(balanced_accuracy: float, num_classes: int) -> float:
    """``(bal - 1/K) / (1 - 1/K)``: 0 at chance whatever the class balance, 1 at perfect."""
    chance = 1.0 / num_classes
    return (balanced_accuracy - chance) / (1.0 - chance)


def _score(pred: np.ndarray, proba: np.ndarray, ys: np.ndarray, num_classes: int,
           seed: int) -> dict:
    report = leakage(torch.as_tensor(pred), torch.as_tensor(ys), num_classes=num_classes,
                     seed=seed)
    report["balanced_leakage"] = balanced_leakage(report["balanced_accuracy"], num_classes)
    report["leakage"] = max(report["normalized_leakage"], report["balanced_leakage"])
    report["auroc"] = _binary_auroc(ys, proba)
    return report


_FIGURES = ("accuracy", "balanced_accuracy", "normalized_leakage", "balanced_leakage", "leakage",
            "auroc")


def _summary(view: str, runs: list[dict], curve: dict[float, list[float]]) -> dict:
    """An attacker's report: every seed's, the mean and std of the main figures, and the mean
    leakage at each share of the attacker rows."""
    out = {"input": view, "seeds": runs}
    for key in _FIGURES:
        values = [r[key] for r in runs if r[key] is not None]
        if values:
            out[key] = float(np.mean(values))
            out[f"{key}_std"] = float(np.std(values))
    out.update(majority=runs[0]["majority"], chance=runs[0]["chance"], n=runs[0]["n"],
               ci95=runs[0]["ci95"])
    out["curve"] = {f"{share:g}": float(np.mean(v)) for share, v in sorted(curve.items())}
    return out


def _run_attacker(predict: Predictor, view: str, xa, ya, xs, ys, *, num_classes: int,
                  seeds: int, folds: int) -> tuple[dict, Callable[[float], list[dict]]]:
    """An attacker on all the attacker rows, ``seeds`` seeds (the report of :func:`_summary`);
    its ``rerun(share)`` gives the mean leakage on a share of them (the learning curve)."""
    def rerun(share: float) -> list[dict]:
        runs = []
        for seed in range(seeds):
            pred, proba, chosen = _predictions(predict, xa, ya, xs, ys, folds=folds,
                                               share=share, seed=seed, num_classes=num_classes)
            runs.append(_score(pred, proba, ys, num_classes, seed) | {"chosen": chosen})
        return runs

    runs = rerun(1.0)
    report = _summary(view, runs, {1.0: [r["leakage"] for r in runs]})
    return report, rerun


def _view_of(name: str, views: dict[str, np.ndarray]) -> tuple[str | None, str | None]:
    """The input an attacker family reads (the flat map if it is narrow enough, else the pooled
    one), or ``(None, reason)``."""
    family = ATTACKERS[name]
    view = "flat" if views["flat"].shape[1] <= family.max_dim else "pooled"
    if view not in views or views[view].shape[1] > family.max_dim:
        width = views.get(view, views["flat"]).shape[1]
        return None, f"{width} input dimensions, more than the {family.max_dim} {name} takes"
    return view, None


def _worst(scored: dict[str, dict]) -> dict:
    """The worst case over the attackers: the largest leakage (the larger of the accuracy-based
    and the balanced figure), with each figure's own worst attacker beside it, and the worst
    attacker's learning curve."""
    top = max(scored, key=lambda k: scored[k]["leakage"])
    top_acc = max(scored, key=lambda k: scored[k]["normalized_leakage"])
    top_bal = max(scored, key=lambda k: scored[k]["balanced_leakage"])
    worst = {"attacker": top, "leakage": scored[top]["leakage"],
             "leakage_std": scored[top].get("leakage_std", 0.0),
             "normalized_leakage": scored[top_acc]["normalized_leakage"],
             "normalized_leakage_std": scored[top_acc].get("normalized_leakage_std", 0.0),
             "normalized_attacker": top_acc, "accuracy": scored[top_acc]["accuracy"],
             "accuracy_std": scored[top_acc].get("accuracy_std", 0.0),
             "balanced_leakage": scored[top_bal]["balanced_leakage"],
             "balanced_attacker": top_bal,
             "balanced_accuracy": scored[top_bal]["balanced_accuracy"],
             "majority": scored[top]["majority"], "chance": scored[top]["chance"]}
    worst["curve"] = dict(scored[top]["curve"])
    shares = list(worst["curve"])
    # More attacker rows still helped: the figure is a lower bound of what a better-supplied
    # attacker reads (the rule, fixed in advance: any rise from the last share to the whole).
    worst["still_rising"] = bool(len(shares) > 1 and worst["curve"][shares[-1]]
                                 > worst["curve"][shares[-2]])
    return worst


def _train_row_basis(xtr: np.ndarray, xte: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both standardised with the train rows' statistics, then written in an orthonormal basis
    of the span of the standardised train rows (at most one coordinate per train row).

    For an L2-penalised linear model this changes the cost and nothing else: its weights lie in
    that span (the representer theorem), the basis is orthonormal so the penalty is unchanged,
    and the part of a test row outside the span meets zero weight. On the demo's 8,192-wide
    backbone maps with 2,400 train rows every fit of the C sweep gets 3.4x narrower (torch's QR,
    float32 like the features: 1.7 s on 2 cores)."""
    mean, std = xtr.mean(axis=0), xtr.std(axis=0)
    std[std == 0] = 1.0  # constant columns stay 0, as scikit-learn's StandardScaler leaves them
    a, b = torch.from_numpy((xtr - mean) / std), torch.from_numpy((xte - mean) / std)
    q, r = torch.linalg.qr(a.T)  # a.T = q @ r, q (D, N) with orthonormal columns
    return r.T.numpy(), (b @ q).numpy()  # a @ q = r.T


def online_codelength(features, labels, *, num_classes: int, seed: int = 0,
                      fractions: tuple[float, ...] = (0.001, 0.002, 0.004, 0.008, 0.016, 0.032,
                                                      0.0625, 0.125, 0.25, 0.5, 1.0),
                      grid: tuple[float, ...] = (0.001, 0.01, 0.1)) -> dict:
    """Online (prequential) description length of ``labels`` given ``features`` (Voita & Titov
    2020), with logistic regression as the probe, against the labels' own prior.

    The items are shuffled (``seed``); the first block is sent with the uniform code, every
    later block with a probe trained on all items before it. An over-confident probe on few
    wide examples pays dearly, so the code is computed for each regularisation ``C`` of
    ``grid`` and the shortest is kept, charged log2(len(grid)) bits for naming it. The
    reference is the same online code without features: each block sent with the
    Laplace-smoothed label frequencies of the items before it (the prior). Returns
    ``codelength_bits``, ``prior_bits``, ``uniform_bits`` (N log2 K), ``compression``
    (prior / features: 1 = the features say nothing beyond the class balance, at any balance;
    higher = more) and the chosen ``C``. The rows must be attacker rows: none a defender saw.
    """
    x = _views(_as_array(features, "features"))["flat"]
    y = _as_array(labels, "labels").astype(np.int64)
    n = len(y)
    order = np.random.default_rng(seed).permutation(n)
    x, y = x[order], y[order]
    ends = sorted({max(1, min(n, math.ceil(f * n))) for f in fractions} | {n})
    family = ATTACKERS["logistic"]

    def prior(ytrain: np.ndarray, rows: int) -> np.ndarray:
        counts = np.bincount(ytrain, minlength=num_classes) + 1.0
        return np.tile(counts / counts.sum(), (rows, 1))

    def code(probe) -> float:
        bits = ends[0] * math.log2(num_classes)
        for start, stop in zip(ends[:-1], ends[1:], strict=True):
            p = probe(start, stop)
            picked = np.clip(p[np.arange(stop - start), y[start:stop]], 1e-12, 1.0)
            bits += float(-np.log2(picked).sum())
        return bits

    def with_features(c: float):
        def probe(start, stop):
            ytrain = y[:start]
            present = np.unique(ytrain)
            if len(present) < 2:  # no classifier yet: the prior
                return prior(ytrain, stop - start)
            model = _fit(family, {"C": c}, seed, x[:start], ytrain)
            p = np.full((stop - start, num_classes), 1e-6)
            p[:, present] = model.predict_proba(x[start:stop])
            return p / p.sum(axis=1, keepdims=True)
        return probe

    best_bits, best_c = math.inf, grid[0]
    for c in grid:
        bits = code(with_features(c)) + math.log2(len(grid))
        if bits < best_bits:
            best_bits, best_c = bits, c
    prior_bits = code(lambda start, stop: prior(y[:start], stop - start))
    return {"codelength_bits": best_bits, "prior_bits": prior_bits,
            "uniform_bits": n * math.log2(num_classes), "compression": prior_bits / best_bits,
            "C": best_c}


@dataclass
class AuditConfig:
    """The settings of one audit, checked on creation (callers build it before they read data
    or write anything): the zoo, the seeds (1..``MAX_SEEDS``,
    :func:`~privatenet.train.config.check_seeds`), the folds of a cross-fitted audit and the
    attackers' validation share."""

    zoo: str = setting("full", "full (the headline): logistic, kNN, boosted trees, an MLP, the "
                               "model's adversary head for the tap retrained and a deeper conv "
                               "head on maps; quick: logistic, kNN, boosted trees (a preview)",
                       choices=tuple(ZOOS))
    seeds: int = setting(1, "seeds of the folds, validation parts and attackers (mean and std)")
    folds: int = setting(5, "folds of the test split when the data has no 'attacker' split")
    val_fraction: float = 0.2
    in_sample: bool = setting(False, "add a column of attackers trained on the network's own "
                                     "train rows (labelled: what an audit on defender rows "
                                     "would wrongly report)")

    def __post_init__(self) -> None:
        if self.zoo not in ZOOS:
            raise SettingError("zoo", self.zoo, f"is unknown; use one of {', '.join(ZOOS)}")
        check_seeds(self.seeds)
        if not is_int(self.folds) or not 2 <= self.folds <= 20:
            raise SettingError("folds", self.folds, "is invalid; give an integer in 2..20")
        if not 0.05 <= self.val_fraction <= 0.5:
            raise SettingError("val_fraction", self.val_fraction, "is outside [0.05, 0.5]")
        if not isinstance(self.in_sample, bool):
            raise SettingError("in_sample", self.in_sample, "is invalid; give True or False")


def check_audit_rows(labels, *, what: str) -> None:
    """Refuse (one line) labels too few for an audit: fewer than :data:`MIN_ROWS` known labels,
    or fewer than 2 classes with 2 rows each (a rarer class may have a single row; callers
    check before they train)."""
    y = _as_array(labels, f"{what} labels")
    y = y[y != MISSING].astype(np.int64)
    classes = np.unique(y)
    if len(classes) < 2:
        raise PrivatenetError(f"{what}: {len(classes)} class of the attribute; an attacker "
                              "needs at least 2")
    if (np.bincount(y) >= 2).sum() < 2 or len(y) < MIN_ROWS:
        raise PrivatenetError(f"{what}: {len(y)} labelled rows; an audit needs at least "
                              f"{MIN_ROWS}, and 2 classes of 2 rows or more")


def _labelled(rows, what: str, num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(features, labels)`` as arrays: (the row mask of known labels, features, labels)."""
    if not isinstance(rows, (tuple, list)) or len(rows) != 2:
        raise PrivatenetError(f"{what} must be a pair (features, labels)")
    x, y = _as_array(rows[0], f"{what} features"), _as_array(rows[1], f"{what} labels")
    if len(x) != len(y):
        raise PrivatenetError(f"{what}: {len(x)} feature rows for {len(y)} labels")
    check_audit_rows(y, what=f"the {what} rows")
    keep = y != MISSING
    y = y[keep].astype(np.int64)
    if y.min() < 0 or y.max() >= num_classes:
        raise PrivatenetError(f"{what} labels go up to {y.max()}, outside "
                              f"num_classes={num_classes}")
    return keep, x[keep], y


def audit(*, scoring, attacker=None, in_sample=None, num_classes: int, zoo: str = "full",
          seeds: int = 1, folds: int = 5, val_fraction: float = 0.2,
          curve: tuple[float, ...] = CURVE, controls: Mapping[str, tuple] | None = None,
          mdl: bool = True,
          heads: Mapping[str, Callable[[tuple, int], torch.nn.Module]] | None = None,
          head_epochs: tuple[int, ...] = (5, 15, 30), device: str = "cpu",
          on_attacker: Callable[[str, str], None] | None = None) -> dict:
    """Audit how much features reveal about a private attribute (docs/design.md §5).

    ``scoring``: ``(features (N, ...), labels (N,))`` of the rows the attackers are scored on;
    ``attacker``: the same of the rows they train, tune and standardise on, or ``None`` to
    cross-fit over ``folds`` stratified folds of the scoring rows (the attacker is then
    data-limited). **Neither may hold a defender row** (a row the network, a known adversary,
    an eraser or a regularizer was fitted on): an attacker on those rows measures the
    defence's overfit, not what a stranger with their own faces reads. Labels of -1 (unknown)
    are dropped.

    Every attacker of ``zoo`` (:data:`ZOOS`) and every torch head of ``heads``
    (``{name: build(tap_shape, num_classes)}``, epochs chosen among ``head_epochs`` on a
    ``val_fraction`` validation part of the attacker rows, trained on ``device``), ``seeds``
    seeds; the learning curve repeats them on each share of ``curve`` of the attacker rows.
    ``controls``: ``{name: (attacker_features or None, scoring_features)}`` of the same rows,
    audited the same way by the scikit-learn zoo (the task output: the floor no feature defence
    goes below; a random network; the image). ``in_sample``: ``(features, labels)`` of defender
    rows to train the zoo on, scored on the scoring rows: the in-sample column, labelled so and
    never the headline. ``on_attacker(what, attacker)`` is called as each attacker starts.

    Returns ``{"attackers": {name: report}, "worst": {...}, "mdl": ..., "controls": {...},
    "in_sample": {...} or None, "protocol": "fresh attacker rows" or "cross-fitted",
    "data_limited": bool, "settings": {...}}``; a report holds accuracy, balanced accuracy,
    majority, 1/K, both leakage figures, their larger (``leakage``), AUROC (binary) and the
    learning curve; ``worst`` holds the largest of each over the zoo and ``still_rising``.
    """
    AuditConfig(zoo=zoo, seeds=seeds, folds=folds, val_fraction=val_fraction)
    if not isinstance(curve, (tuple, list)) or not all(
            isinstance(s, float) and 0.0 < s < 1.0 for s in curve):
        raise SettingError("curve", curve, "is invalid; give shares in (0, 1), e.g. "
                                           "(0.25, 0.5), or () for none")
    curve = tuple(sorted(curve))
    keep_s, xs, ys = _labelled(scoring, "scoring", num_classes)
    fresh = attacker is not None
    if fresh:
        keep_a, xa, ya = _labelled(attacker, "attacker", num_classes)
    else:
        keep_a, xa, ya = None, None, None

    def rows_of(features, keep, what):
        x = _as_array(features, what)
        if len(x) != len(keep):
            raise PrivatenetError(f"{what}: {len(x)} rows for {len(keep)} labels")
        return x[keep]

    def run(what: str, xa, ya, xs, torch_heads: Mapping, with_curve: tuple) -> dict:
        va = _views(xa) if xa is not None else None
        vs = _views(xs)
        attackers, reruns = {}, {}
        for name in ZOOS[zoo]:
            if on_attacker:
                on_attacker(what, name)
            view, reason = _view_of(name, va or vs)
            if view is None:
                attackers[name] = {"skipped": reason}
                continue
            predict = _sklearn_predictor(name, num_classes, val_fraction)
            attackers[name], reruns[name] = _run_attacker(
                predict, view, va[view] if va else None, ya, vs[view], ys,
                num_classes=num_classes, seeds=seeds, folds=folds)
        for name, build in torch_heads.items():
            if on_attacker:
                on_attacker(what, name)
            predict = _head_predictor(build, num_classes, val_fraction, head_epochs, device)
            attackers[name], reruns[name] = _run_attacker(
                predict, "map" if xs.ndim > 2 else "flat", xa, ya, xs, ys,
                num_classes=num_classes, seeds=seeds, folds=folds)
        scored = {k: v for k, v in attackers.items() if "skipped" not in v}
        if not scored:
            raise PrivatenetError(f"{what}: every attacker of the {zoo} zoo was skipped "
                                  f"({attackers[ZOOS[zoo][0]]['skipped']}); audit a narrower "
                                  "tap")
        # The learning curve of the worst attacker: the same attacker on shares of its rows
        # (a share that leaves fewer rows than an audit needs is left out).
        top = max(scored, key=lambda k: scored[k]["leakage"])
        rows = len(ya) if xa is not None else len(ys) * (folds - 1) / folds
        with_curve = tuple(share for share in with_curve if share * rows >= MIN_ROWS)
        if with_curve and on_attacker:
            on_attacker(what, f"{top} on {', '.join(f'{s:.0%}' for s in with_curve)} of its rows")
        for share in with_curve:
            runs = reruns[top](share)
            scored[top]["curve"][f"{share:g}"] = float(np.mean([r["leakage"] for r in runs]))
        scored[top]["curve"] = dict(sorted(scored[top]["curve"].items(),
                                           key=lambda kv: float(kv[0])))
        out = {"attackers": attackers, "worst": _worst(scored)}
        if mdl and what != "in sample":  # coded on attacker rows (or the scoring rows)
            rows = (xa, ya) if xa is not None else (xs, ys)
            out["mdl"] = online_codelength(*rows, num_classes=num_classes)
        return out

    result = run("features", xa, ya, xs, heads or {}, curve)
    result["controls"] = {}
    for name, pair in (controls or {}).items():
        if not isinstance(pair, (tuple, list)) or len(pair) != 2 or (pair[0] is None) == fresh:
            raise PrivatenetError(f"control {name!r} must be (attacker features"
                                  f"{'' if fresh else ' = None'}, scoring features)")
        ca = rows_of(pair[0], keep_a, f"{name} attacker features") if fresh else None
        result["controls"][name] = run(name, ca, ya, rows_of(pair[1], keep_s,
                                                              f"{name} scoring features"),
                                       {}, ())
    result["in_sample"] = None
    if in_sample is not None:
        _, xi, yi = _labelled(in_sample, "in-sample (defender)", num_classes)
        result["in_sample"] = run("in sample", xi, yi, xs, heads or {}, ())
    result["protocol"] = "fresh attacker rows" if fresh else "cross-fitted"
    result["data_limited"] = not fresh
    result["settings"] = {"zoo": zoo, "seeds": seeds, "folds": None if fresh else folds,
                          "val_fraction": val_fraction, "curve": list(curve),
                          "heads": list(heads or {}), "head_epochs": list(head_epochs),
                          "num_classes": num_classes,
                          "n_attacker": int(len(ya)) if fresh else None,
                          "n_scoring": int(len(ys)),
                          "n_in_sample": None if in_sample is None else int(len(yi))}
    return result
