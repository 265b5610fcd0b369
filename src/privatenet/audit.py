"""The leakage audit: the worst case over an attacker zoo (docs/design.md §5).

One adversary at chance proves nothing; an attacker who retrains picks the strongest tool. The
audit trains every attacker of a zoo on frozen train-split features, makes every choice
(regularisation, k, ...) on a validation part carved out of the train split, refits on the whole
train split with that choice and scores once on the test split. It reports every attacker's
leakage figures (mean and std over seeds), the worst case over the zoo (the headline), an online
description-length probe (Voita & Titov 2020) and the same for control features (what the task
output alone reveals, a randomly initialised network, the image itself).

The zoo (scikit-learn): ``logistic`` (L2 logistic regression, C swept), ``knn`` (cosine k-nearest
neighbours, k swept), ``boosted_trees`` (HistGradientBoosting, learning rate swept, early
stopping), ``mlp`` (one hidden layer, early stopping, L2 swept). ``quick`` and ``full`` name
subsets; a family whose input would be too wide reads the spatially averaged map instead, or is
skipped with the reason in the report.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import numpy as np
import torch

from privatenet.data.base import MISSING
from privatenet.errors import PrivatenetError
from privatenet.metrics import leakage

__all__ = ["ATTACKERS", "ZOOS", "audit", "check_audit_settings", "online_codelength"]

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
#: ``quick``: the cheap families for reports; ``full``: the whole zoo with wider sweeps.
ZOOS: dict[str, tuple[str, ...]] = {
    "quick": ("logistic", "knn", "boosted_trees"),
    "full": ("logistic", "knn", "boosted_trees", "mlp"),
}


def _as_array(x, what: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().float().numpy()
    x = np.asarray(x)
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

    if previous is not None and not family.scale:
        model = previous.set_params(warm_start=True, **params)
    else:
        model = family.build(params, seed)
    if family.scale:
        model = make_pipeline(StandardScaler(), model)
    with warnings.catch_warnings():
        # Convergence warnings on tiny or separable data are not the user's to act on.
        warnings.simplefilter("ignore")
        model.fit(x, y)
    return model


def _split(n: int, labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, ...]:
    """Stratified train/validation indices of the train split."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(n)
    counts = np.bincount(labels)
    stratify = labels if counts[counts > 0].min() >= 2 else None
    return tuple(train_test_split(idx, test_size=fraction, random_state=seed,
                                  stratify=stratify))


def _binary_auroc(y: np.ndarray, proba: np.ndarray | None) -> float | None:
    """AUROC of the positive class's score for a binary attribute, else ``None``."""
    from sklearn.metrics import roc_auc_score

    if proba is None or len(np.unique(y)) != 2 or proba.shape[1] != 2:
        return None
    return float(roc_auc_score(y, proba[:, 1]))


def _summary(view: str, runs: list[dict]) -> dict:
    """An attacker's report: every seed's, and the mean and std of the main figures."""
    out = {"input": view, "seeds": runs}
    for key in ("accuracy", "balanced_accuracy", "normalized_leakage", "auroc"):
        values = [r[key] for r in runs if r[key] is not None]
        if values:
            out[key] = float(np.mean(values))
            out[f"{key}_std"] = float(np.std(values))
    out.update(majority=runs[0]["majority"], chance=runs[0]["chance"], n=runs[0]["n"],
               ci95=runs[0]["ci95"])
    return out


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


def _one_attacker(name: str, views_tr: dict, ytr: np.ndarray, views_te: dict, yte: np.ndarray,
                  num_classes: int, seeds: int, val_fraction: float) -> dict:
    family = ATTACKERS[name]
    view = "flat" if views_tr["flat"].shape[1] <= family.max_dim else "pooled"
    if view not in views_tr or views_tr[view].shape[1] > family.max_dim:
        width = views_tr.get(view, views_tr["flat"]).shape[1]
        return {"skipped": f"{width} input dimensions, more than the {family.max_dim} "
                           f"{name} takes"}
    xtr, xte = views_tr[view], views_te[view]
    if family.linear and xtr.shape[1] > xtr.shape[0]:
        # Wider than the train split is long: the same fits, in fewer dimensions. The
        # standardisation then uses the whole train split (no labels) for every fit.
        xtr, xte = _train_row_basis(xtr.astype(np.float32), xte.astype(np.float32))
        family = replace(family, scale=False)
    runs = []
    for seed in range(seeds):
        fit_idx, val_idx = _split(len(ytr), ytr, val_fraction, seed)
        best, best_acc = family.grid[0], -1.0
        if len(family.grid) > 1:
            previous = None
            for params in family.grid:
                if name == "knn" and params["k"] > len(fit_idx):
                    continue
                m = _fit(family, params, seed, xtr[fit_idx], ytr[fit_idx], previous)
                previous = m if family.linear else None
                acc = float((m.predict(xtr[val_idx]) == ytr[val_idx]).mean())
                if acc > best_acc:
                    best, best_acc = params, acc
        model = _fit(family, best, seed, xtr, ytr)
        report = leakage(torch.as_tensor(model.predict(xte)), torch.as_tensor(yte),
                         num_classes=num_classes, seed=seed)
        proba = model.predict_proba(xte) if hasattr(model, "predict_proba") else None
        report["auroc"] = _binary_auroc(yte, proba)
        report["chosen"] = best
        runs.append(report)
    return _summary(view, runs)


def _torch_attacker(build: Callable[[tuple, int], torch.nn.Module], xtr: np.ndarray,
                    ytr: np.ndarray, xte: np.ndarray, yte: np.ndarray, num_classes: int,
                    seeds: int, val_fraction: float, epochs: tuple[int, ...], device: str
                    ) -> dict:
    """A torch head (e.g. the paper's adversary retrained) as an attacker: the epoch count is
    chosen on the validation part (accuracy after each epoch of ``epochs``), then the head is
    retrained from the same initialisation on the whole train split and scored on test."""
    from privatenet.train.config import TrainConfig
    from privatenet.train.loop import Callbacks, fit_adversary, predict_features

    ftr, fte = torch.from_numpy(xtr).float(), torch.from_numpy(xte).float()
    ltr = torch.from_numpy(ytr)
    runs = []
    for seed in range(seeds):
        fit_idx, val_idx = _split(len(ytr), ytr, val_fraction, seed)
        config = TrainConfig(epochs=max(epochs), batch_size=128, seed=seed, augment=False,
                             device=device)
        torch.manual_seed(seed)
        head = build(tuple(ftr.shape[1:]), num_classes)
        scores: dict[int, float] = {}

        def score(record, head=head, val_idx=val_idx, scores=scores):
            if record["epoch"] in epochs:
                pred = predict_features(head, ftr[val_idx], device=device).numpy()
                scores[record["epoch"]] = float((pred == ytr[val_idx]).mean())

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
        report = leakage(torch.as_tensor(proba.argmax(1)), torch.as_tensor(yte),
                         num_classes=num_classes, seed=seed)
        report["auroc"] = _binary_auroc(yte, proba)
        report["chosen"] = {"epochs": best}
        runs.append(report)
    return _summary("map" if xtr.ndim > 2 else "flat", runs)


def online_codelength(features, labels, *, num_classes: int, seed: int = 0,
                      fractions: tuple[float, ...] = (0.001, 0.002, 0.004, 0.008, 0.016, 0.032,
                                                      0.0625, 0.125, 0.25, 0.5, 1.0),
                      grid: tuple[float, ...] = (0.001, 0.01, 0.1)) -> dict:
    """Online (prequential) description length of ``labels`` given ``features`` (Voita & Titov
    2020), with logistic regression as the probe.

    The items are shuffled (``seed``); the first block is sent with the uniform code, every
    later block with a probe trained on all items before it. An over-confident probe on few
    wide examples pays dearly, so the code is computed for each regularisation ``C`` of
    ``grid`` and the shortest is kept, charged log2(len(grid)) bits for naming it. Returns
    ``codelength_bits``, ``uniform_bits`` (N log2 K), ``compression`` (their ratio: 1 = the
    features say nothing about the labels; higher = more) and the chosen ``C``. Unlike a
    probe's accuracy it does not hinge on one probe's capacity.
    """
    x = _views(_as_array(features, "features"))["flat"]
    y = _as_array(labels, "labels").astype(np.int64)
    n = len(y)
    order = np.random.default_rng(seed).permutation(n)
    x, y = x[order], y[order]
    ends = sorted({max(1, min(n, math.ceil(f * n))) for f in fractions} | {n})
    family = ATTACKERS["logistic"]
    best_bits, best_c = math.inf, grid[0]
    for c in grid:
        bits = ends[0] * math.log2(num_classes) + math.log2(len(grid))
        for start, stop in zip(ends[:-1], ends[1:], strict=True):
            ytrain = y[:start]
            present = np.unique(ytrain)
            if len(present) < 2:  # no classifier yet: the class frequencies, Laplace-smoothed
                counts = np.bincount(ytrain, minlength=num_classes) + 1.0
                p = np.tile(counts / counts.sum(), (stop - start, 1))
            else:
                model = _fit(family, {"C": c}, seed, x[:start], ytrain)
                p = np.full((stop - start, num_classes), 1e-6)
                p[:, present] = model.predict_proba(x[start:stop])
                p /= p.sum(axis=1, keepdims=True)
            picked = np.clip(p[np.arange(stop - start), y[start:stop]], 1e-12, 1.0)
            bits += float(-np.log2(picked).sum())
        if bits < best_bits:
            best_bits, best_c = bits, c
    uniform = n * math.log2(num_classes)
    return {"codelength_bits": best_bits, "uniform_bits": uniform,
            "compression": uniform / best_bits, "C": best_c}


def check_audit_settings(*, zoo: str, seeds: int, val_fraction: float = 0.2) -> None:
    """One-line errors for an unknown zoo, a seed count outside 1..``MAX_SEEDS``
    (:func:`~privatenet.train.config.check_seeds`) or a validation fraction outside
    [0.05, 0.5] (callers check before they write anything)."""
    from privatenet.train.config import check_seeds

    if zoo not in ZOOS:
        raise PrivatenetError(f"zoo={zoo!r} is unknown; use one of {', '.join(ZOOS)}")
    check_seeds(seeds)
    if not 0.05 <= val_fraction <= 0.5:
        raise PrivatenetError(f"val_fraction={val_fraction!r} is outside [0.05, 0.5]")


def audit(train_features, train_labels, test_features, test_labels, *, num_classes: int,
          zoo: str = "quick", seeds: int = 1, val_fraction: float = 0.2,
          controls: Mapping[str, tuple] | None = None, mdl: bool = True,
          heads: Mapping[str, Callable[[tuple, int], torch.nn.Module]] | None = None,
          head_epochs: tuple[int, ...] = (5, 15, 30), device: str = "cpu",
          on_attacker: Callable[[str, str], None] | None = None) -> dict:
    """Audit how much ``*_features`` (N, ...) reveal about ``*_labels`` (N,): every attacker of
    ``zoo`` (:data:`ZOOS`), ``seeds`` seeds, choices on a ``val_fraction`` part of the train
    split, scored once on the test split. Labels of -1 (unknown) are dropped.

    ``controls``: ``{name: (train_features, test_features)}`` audited the same way (same rows
    and labels), e.g. the task output (the floor no feature defence goes below), a randomly
    initialised network, the image. ``heads``: ``{name: build(tap_shape, num_classes)}`` torch
    heads (the paper's adversary retrained, a deeper head) attacking the features themselves,
    not the controls, with the epoch count chosen among ``head_epochs`` on the validation part
    (trained on ``device``). ``on_attacker(what, attacker)`` is called as each attacker starts
    (progress). Returns ``{"attackers": {name: report}, "worst": {attacker,
    normalized_leakage, accuracy, ...}, "mdl": ..., "controls": {name: {...}}, "settings"}``.
    """
    check_audit_settings(zoo=zoo, seeds=seeds, val_fraction=val_fraction)
    ytr, yte = _as_array(train_labels, "train labels"), _as_array(test_labels, "test labels")
    keep_tr, keep_te = ytr != MISSING, yte != MISSING
    ytr, yte = ytr[keep_tr].astype(np.int64), yte[keep_te].astype(np.int64)
    classes = np.unique(ytr)
    if len(classes) < 2:
        raise PrivatenetError(f"the train split has {len(classes)} class of the attribute; an "
                              "attacker needs at least 2")
    if ytr.max() >= num_classes or yte.max() >= num_classes:
        raise PrivatenetError(f"labels go up to {max(ytr.max(), yte.max())}, outside "
                              f"num_classes={num_classes}")
    if min(np.bincount(ytr)[classes]) < 2 or len(ytr) < 20:
        raise PrivatenetError(f"the train split has {len(ytr)} labelled rows; an audit needs at "
                              "least 20 and 2 per class")

    def run(what: str, ftr, fte, torch_heads: Mapping) -> dict:
        ftr, fte = _as_array(ftr, f"{what} train features"), _as_array(fte, f"{what} test "
                                                                              "features")
        if len(ftr) != len(keep_tr) or len(fte) != len(keep_te):
            raise PrivatenetError(f"{what}: {len(ftr)} train and {len(fte)} test feature rows "
                                  f"for {len(keep_tr)} and {len(keep_te)} labels")
        vtr, vte = _views(ftr[keep_tr]), _views(fte[keep_te])
        attackers = {}
        for name in ZOOS[zoo]:
            if on_attacker:
                on_attacker(what, name)
            attackers[name] = _one_attacker(name, vtr, ytr, vte, yte, num_classes, seeds,
                                            val_fraction)
        for name, build in torch_heads.items():
            if on_attacker:
                on_attacker(what, name)
            attackers[name] = _torch_attacker(build, ftr[keep_tr], ytr, fte[keep_te], yte,
                                              num_classes, seeds, val_fraction, head_epochs,
                                              device)
        scored = {k: v for k, v in attackers.items() if "skipped" not in v}
        if not scored:
            raise PrivatenetError(f"{what}: every attacker of the {zoo} zoo was skipped "
                                  f"({attackers[ZOOS[zoo][0]]['skipped']}); audit a narrower "
                                  "tap")
        top = max(scored, key=lambda k: scored[k]["normalized_leakage"])
        worst = {"attacker": top, **{k: scored[top][k] for k in (
            "accuracy", "accuracy_std", "balanced_accuracy", "normalized_leakage",
            "normalized_leakage_std", "majority", "chance")}}
        out = {"attackers": attackers, "worst": worst}
        if mdl:
            out["mdl"] = online_codelength(ftr[keep_tr], ytr, num_classes=num_classes)
        return out

    result = run("features", train_features, test_features, heads or {})
    result["controls"] = {name: run(name, a, b, {}) for name, (a, b) in
                          (controls or {}).items()}
    result["settings"] = {"zoo": zoo, "seeds": seeds, "val_fraction": val_fraction,
                          "heads": list(heads or {}), "head_epochs": list(head_epochs),
                          "num_classes": num_classes, "n_train": int(len(ytr)),
                          "n_test": int(len(yte))}
    return result
