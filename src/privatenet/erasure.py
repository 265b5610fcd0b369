"""The ``leace`` defence: linear concept erasure at a tap, then fine-tuning after it.

LEACE (least-squares concept erasure; Belrose et al., *LEACE: Perfect linear concept erasure in
closed form*, NeurIPS 2023) is the affine map ``x -> x - L R (x - mean)`` of least mean-squared
change after which the features' cross-covariance with the one-hot private label is zero. The
defence:

1. ``eraser = fit_eraser(extract(net, train.images, tap=t), s, num_classes=K)`` fits it on the
   train split's features at tap ``t`` (private labels ``s``, -1 = unknown);
2. ``net2 = erase_at_tap(net, tap=t, eraser=eraser)`` inserts it as a fixed layer at the tap and
   freezes everything before the tap (parameters, and batch-norm statistics: those layers stay in
   eval mode), so the features the eraser was fitted on do not drift;
3. ``fit(model=net2, ...)`` (no regularizer) fine-tunes the layers after the tap to the erased
   features.

**What it guarantees.** On the data it was fitted on (the train split's features at the tap,
with the upstream layers frozen exactly as ``extract`` ran them) every private class has the same
mean erased feature vector (zero cross-covariance with the one-hot label). By LEACE's theorem
(linear guardedness) *no linear attacker* (an affine map of the erased features trained with a
convex loss: least squares, logistic regression, a linear SVM, the ``linear`` adversary head)
reaches a lower loss than the best constant prediction. That is a statement about convex losses;
for accuracy it means in practice the majority rate, which the tests check, not a theorem. On
other data from the same distribution it holds only up to estimation error (class means and
covariance are estimated from the train split, with shrinkage), and with fewer fitting rows
than feature dimensions (8,192-wide backbone maps, 2,000 rows) that error is most of the
effect: the fitted direction is mostly noise, and a linear attacker trained on *fresh* rows
reads nearly as much as before. Only an audit whose attackers train on rows the eraser never
saw measures this (docs/design.md §5; tests/test_audit.py shows the failure). With ARM
``affinity="batch"`` a tap after the ARM block depends on the batch, so the fitted statistics
do too.

**What it does not guarantee.** Nothing against *nonlinear* attackers: an MLP, the paper's
``arm_fc`` head or a tree ensemble on the same erased features can still recover the attribute
(erasing class means leaves differences in covariance and higher moments). Taps *after* the
erased one (``arm`` when ``backbone`` is erased) are nonlinear functions of it and carry no
guarantee at all. Audit the result with the nonlinear attackers of :mod:`privatenet.auditing`.

The eraser is computed here rather than by ``concept_erasure.LeaceFitter``: the same estimator
(``LeaceFitter(method="leace", affine=True, constrain_cov_trace=True, shrinkage=True,
svd_tol=0.01)``, checked against it in the tests to float64 round-off), but using the
eigendecomposition of the smaller of the covariance and the Gram matrix, so it never forms a
D x D matrix when there are fewer rows than features (the package needed 448 s and 8 GB on 2,400 x
8,192 features on a 2-core CPU). The result holds plain buffers: inference needs no extra
package.
"""

from __future__ import annotations

import copy
import itertools
import math
import os
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from privatenet.errors import PrivatenetError
from privatenet.models.registry import check_num_classes, inner_from_config, register_wrapper
from privatenet.models.taps import TapWrapper, tap_layer, wrapped_image_size

__all__ = ["ErasedModel", "TapEraser", "erase_at_tap", "erased_from_config", "fit_eraser"]

#: ``fit_eraser`` refuses work whose float64 working set exceeds this share of physical RAM.
MEMORY_FRACTION = 0.4
#: LEACE's threshold on the singular values of the whitened cross-covariance (as the package).
SVD_TOL = 0.01

_CONFIG_KEYS = ("name", "num_classes", "inner", "tap", "shape", "rank", "image_size",
                "in_channels")


# --------------------------------------------------------------------------- the eraser


class TapEraser(nn.Module):
    """A fitted LEACE eraser for features of shape ``shape``: ``x - ((x - mean) R^T) L^T``.

    Buffers (saved in the state dict, no trainable parameters): ``mean`` (D,), ``left`` (D, r)
    and ``right`` (r, D), D = prod(shape), r = ``rank`` (at most 2 (K - 1) for K private
    classes). ``forward`` takes (N, ...) with D values per row in any layout (the tap, or the
    layer output the tap is flattened from) and returns the same shape, computed in the
    buffers' dtype (float32) with autocast off. ``TapEraser(shape=..., rank=...)`` with zero
    buffers is the identity, the empty shell a checkpoint is loaded into. Make one with
    :func:`fit_eraser`.
    """

    def __init__(self, *, shape: tuple[int, ...] | list[int], rank: int) -> None:
        super().__init__()
        if (not isinstance(shape, (tuple, list)) or not shape
                or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1
                           for s in shape)):
            raise PrivatenetError(f"eraser shape must be a non-empty list of positive ints (a "
                                  f"tap shape without the batch dimension), got {shape!r}")
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
            raise PrivatenetError(f"eraser rank must be an int >= 0, got {rank!r}")
        self.shape = tuple(shape)
        dim = math.prod(self.shape)
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("left", torch.zeros(dim, rank))
        self.register_buffer("right", torch.zeros(rank, dim))

    @property
    def dim(self) -> int:
        """D, the number of features per row."""
        return self.mean.shape[0]

    @property
    def rank(self) -> int:
        """r, the rank of the erased subspace's factors."""
        return self.left.shape[1]

    def extra_repr(self) -> str:
        return f"shape={self.shape}, rank={self.rank}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 1 or x[0].numel() != self.dim:
            raise PrivatenetError(
                f"the eraser was fitted on {self.dim} features per row (shape {self.shape}) but "
                f"got a tensor of shape {tuple(x.shape)}; feed images of the size its features "
                "were extracted at")
        with torch.autocast(device_type=x.device.type, enabled=False):
            flat = x.reshape(x.shape[0], self.dim).to(self.mean.dtype)
            out = flat - ((flat - self.mean) @ self.right.T) @ self.left.T
        return out.reshape(x.shape)


def _total_memory() -> int | None:
    """Physical RAM in bytes, or None where the platform does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        return None


def _working_bytes(n: int, d: int) -> int:
    """Peak float64 working set of :func:`fit_eraser` on n x d features: the centred copy, the
    m x m covariance or Gram matrix (m = min(n, d)), its eigenvectors and LAPACK's workspace."""
    m = min(n, d)
    return 12 * n * d + 24 * m * m + 128 * d


def _gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.1f} GiB"


def fit_eraser(features: torch.Tensor, labels: torch.Tensor, *, num_classes: int) -> TapEraser:
    """Fit a LEACE eraser that removes the linearly available information about ``labels``.

    ``features`` (N, ...): a tap's features, e.g. ``extract(net, train.images, tap="backbone")``,
    flattened to N x D internally. ``labels`` (N,): integer private labels in [0, num_classes),
    -1 = unknown (those rows are dropped); the concept is the one-hot label of width
    ``num_classes``. Statistics are computed in float64 on the CPU; the returned
    :class:`TapEraser` (float32 buffers) maps (N, ...) to the same shape.

    Guarantee (see the module docstring): after erasure every private class has the same mean
    feature vector on these rows, so no linear predictor trained with a convex loss does better
    on them than the best constant one; nonlinear attackers are not prevented.

    Cost: O(N D m + m^3) time and about ``12 N D + 24 m^2`` bytes, m = min(N, D) (2,400 x 8,192
    features: a few seconds). Work over ``MEMORY_FRACTION`` (40 %) of the RAM is refused with a
    :class:`PrivatenetError`, as are bad shapes, labels and non-finite values.
    """
    check_num_classes(num_classes, "fit_eraser")
    x = torch.as_tensor(features)
    s = torch.as_tensor(labels)
    if x.dim() < 2 or s.dim() != 1 or x.shape[0] != s.shape[0]:
        raise PrivatenetError(f"fit_eraser: features {tuple(x.shape)} and labels "
                              f"{tuple(s.shape)} do not match; pass (N, ...) features and (N,) "
                              "labels")
    if not x.is_floating_point():
        raise PrivatenetError(f"fit_eraser: features must be floating point, got {x.dtype}; "
                              "pass the float features extract() returns")
    if s.is_floating_point() or s.is_complex() or s.dtype == torch.bool:
        raise PrivatenetError(f"fit_eraser: labels must be integers (-1 = unknown), got "
                              f"{s.dtype}")
    s = s.to(device="cpu", dtype=torch.long)
    bad = (s < -1) | (s >= num_classes)
    if bool(bad.any()):
        value = int(s[bad][0])
        raise PrivatenetError(f"fit_eraser: label {value} is outside [0, {num_classes}) (and "
                              f"not -1 = unknown); pass num_classes > {max(value, 0)} or fix "
                              "the labels")
    known = s != -1
    s = s[known]
    present = torch.unique(s).tolist()
    if len(present) < 2:
        raise PrivatenetError(f"fit_eraser: the {s.numel()} rows with a known label hold "
                              f"{len(present)} class{'es' if len(present) != 1 else ''} "
                              f"({present}); erasure needs rows of at least two private classes")
    n, shape = int(s.numel()), tuple(x.shape[1:])
    d = math.prod(shape)
    need, total = _working_bytes(n, d), _total_memory()
    if total is not None and need > MEMORY_FRACTION * total:
        raise PrivatenetError(
            f"fit_eraser: {n} x {d} features need about {_gib(need)} of float64 working memory, "
            f"over {MEMORY_FRACTION:.0%} of this machine's {_gib(total)} RAM; fit on a random "
            f"subset of the rows (memory grows with min(N, D)^2) or erase a smaller tap")
    x64 = x.detach()[known.to(x.device)].reshape(n, d).to("cpu", torch.float64, copy=True)
    if not bool(torch.isfinite(x64).all()):
        raise PrivatenetError("fit_eraser: the features contain NaN or infinite values; fix the "
                              "network (or the data) that produced them")
    z = F.one_hot(s, num_classes).to(torch.float64)
    # Dims constant on these rows (dead ReLU units) carry nothing to erase, and exact LEACE
    # leaves them alone. Its floating-point solution writes ~1e-17 of the erased (label)
    # direction into them instead, which an attacker who standardises features reads back
    # perfectly: measured on digits (1,347 x 8,192 backbone features), a logistic regression
    # on standardised erased features reached 84 % test accuracy on `ink` through 5 such dims,
    # and 49 % (the majority rate) without them. So their rows and columns are zeroed.
    constant = (x64 == x64[:1]).all(0)
    mean, left, right = _leace(x64, z)
    left[constant] = 0.0
    right[:, constant] = 0.0
    eraser = TapEraser(shape=list(shape), rank=left.shape[1])
    with torch.no_grad():
        eraser.mean.copy_(mean)
        eraser.left.copy_(left)
        eraser.right.copy_(right)
    return eraser


class _Basis:
    """An orthonormal basis V (d x r) of the covariance's non-null eigenvectors, applied without
    forming it when it comes from the Gram matrix: V = X^T U diag(scale)."""

    def __init__(self, *, dense: torch.Tensor | None = None, x: torch.Tensor | None = None,
                 u: torch.Tensor | None = None, scale: torch.Tensor | None = None) -> None:
        self.dense, self.x, self.u, self.scale = dense, x, u, scale

    def proj(self, c: torch.Tensor) -> torch.Tensor:  # V^T c
        if self.dense is not None:
            return self.dense.T @ c
        return self.scale[:, None] * (self.u.T @ (self.x @ c))

    def lift(self, y: torch.Tensor) -> torch.Tensor:  # V y
        if self.dense is not None:
            return self.dense @ y
        return self.x.T @ (self.u @ (self.scale[:, None] * y))


def _leace(x: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(mean, left, right)`` of LEACE for ``x`` (n x d float64, centred in place) and the
    concept ``z`` (n x k): concept_erasure 0.2.4's ``LeaceFitter`` with its defaults
    (``leace``, affine, covariance-trace constraint, linear shrinkage, ``svd_tol`` 0.01), with
    every D x D product written through the spectrum of the smaller of X^T X and X X^T."""
    n, d = x.shape
    eps = torch.finfo(torch.float64).eps
    mean = x.mean(0)
    x -= mean
    sigma_xz = x.T @ (z - z.mean(0)) / (n - 1)

    # Spectrum of S = X^T X / n: eigenvalues lam on the basis, 0 on its complement (`rest` dims).
    if n >= d:
        gram = x.T @ x
        lam, vecs = torch.linalg.eigh(gram)
        basis, rest = _Basis(dense=vecs), 0
    else:
        gram = x @ x.T
        lam, vecs = torch.linalg.eigh(gram)
        keep = lam > lam[-1].clamp_min(0) * n * eps
        lam, vecs = lam[keep], vecs[:, keep]
        basis, rest = _Basis(x=x, u=vecs, scale=lam.rsqrt()), d - int(keep.sum())
    trace_s = torch.trace(gram) / n
    frob_s = gram.square().sum() / n**2  # ||X^T X||_F = ||X X^T||_F
    lam = lam / n
    del gram

    # concept_erasure.shrinkage.optimal_linear_shrinkage: Sigma = a S + b I.
    sig0 = trace_s / d
    sigma0_norm_sq = d * sig0**2
    prod_trace = trace_s * sig0
    top = trace_s * trace_s * sigma0_norm_sq / n
    bottom = frob_s * sigma0_norm_sq - prod_trace * prod_trace
    a = 1 - (top + eps) / (bottom + eps)
    b = (1 - a) * (prod_trace + eps) / (sigma0_norm_sq + eps) * sig0
    mu = a * lam + b  # Sigma's eigenvalues on the basis; b on the complement
    b_rest = b if rest else torch.zeros_like(b)

    def apply(on_basis: torch.Tensor, on_rest: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """f(Sigma) c for f given by its values on the basis and on the complement."""
        return on_rest * c + basis.lift((on_basis - on_rest)[:, None] * basis.proj(c))

    # Whitening W = Sigma^{-1/2} and W^+ with LEACE's pinv-style mask.
    cut = torch.cat([mu, b_rest.reshape(1)]).max() * d * eps
    mask = mu > cut
    mask_rest = b > cut if rest else torch.zeros((), dtype=torch.bool)
    w = torch.where(mask, torch.where(mask, mu, 1.0).rsqrt(), 0.0)
    w_inv = torch.where(mask, torch.where(mask, mu, 0.0).sqrt(), 0.0)
    w_rest = torch.where(mask_rest, torch.where(mask_rest, b, 1.0).rsqrt(), 0.0)
    w_inv_rest = torch.where(mask_rest, torch.where(mask_rest, b, 0.0).sqrt(), 0.0)

    u, sv, _ = torch.linalg.svd(apply(w, w_rest, sigma_xz), full_matrices=False)
    u = u[:, sv > SVD_TOL]
    left = apply(w_inv, w_inv_rest, u)  # W^+ u
    right = apply(w, w_rest, u).T  # u^T W

    # The package's covariance-trace constraint mixes P = I - left right with I - u u^T when
    # tr(P Sigma P^T) > tr(Sigma). With this whitening P Sigma P^T = Sigma - W^+ u u^T W^+ (masked
    # directions are left alone), so the trace never grows and the mixing never happens; the
    # tests check the resulting map against the package's.
    if not (bool(torch.isfinite(left).all()) and bool(torch.isfinite(right).all())):
        raise PrivatenetError("fit_eraser: the erasure is numerically unstable (non-finite "
                              "factors); check the features for near-constant or huge values")
    return mean, left, right


# --------------------------------------------------------------------------- the erased model


def _image_size(image_size: Any) -> tuple[int, int]:
    if isinstance(image_size, int) and not isinstance(image_size, bool):
        size = (image_size, image_size)
    elif (isinstance(image_size, (tuple, list)) and len(image_size) == 2
          and all(isinstance(v, int) and not isinstance(v, bool) for v in image_size)):
        size = (image_size[0], image_size[1])
    else:
        raise PrivatenetError(f"image_size must be an int or (H, W), got {image_size!r}")
    if min(size) < 1:
        raise PrivatenetError(f"image_size {image_size!r} must be >= 1")
    return size


def _upstream(model: nn.Module, tap: str, path: str, eraser: TapEraser,
              size: tuple[int, int], in_channels: int) -> tuple[list[str], list[str]]:
    """Parameter names the tap depends on, and names of the modules run before it, from one
    probe forward of a random image in eval mode (flags and requires_grad restored after).

    Parameters: by autograd, at the moment the tap's layer returns. Modules: those whose forward
    returned no later than the tap's layer (so any dropout, batch norm or ARM affinity that
    shapes the tap), except modules with parameters of their own none of which the tap depends
    on (a side branch run earlier). The probe also checks that the tap is the layer's output
    (``tap_layers`` is right) and that its shape fits the eraser.
    """
    layer = model.get_submodule(path)
    params = dict(model.named_parameters())
    flags = {m: m.training for m in model.modules()}
    needs = {p: p.requires_grad for p in params.values()}
    order: list[nn.Module] = []
    seen: dict[str, Any] = {}

    def record(module, _inputs, _output) -> None:
        order.append(module)

    def capture(_module, _inputs, output) -> None:
        if "out" in seen or not isinstance(output, torch.Tensor):
            return
        seen["out"], seen["index"] = output, len(order)
        used: set[str] = set()
        if output.requires_grad:
            names = list(params)
            grads = torch.autograd.grad(output, [params[k] for k in names],
                                        grad_outputs=torch.ones_like(output),
                                        allow_unused=True, retain_graph=True)
            used = {k for k, g in zip(names, grads, strict=True) if g is not None}
        seen["params"] = used

    ref = next(iter(params.values()), None)
    device = ref.device if ref is not None else torch.device("cpu")
    dtype = ref.dtype if ref is not None and ref.is_floating_point() else torch.float32
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, in_channels, *size, generator=gen).to(device=device, dtype=dtype)
    handles = [m.register_forward_hook(record) for m in model.modules()]
    handles.append(layer.register_forward_hook(capture))
    model.eval()
    try:
        for p in params.values():
            p.requires_grad_(True)
        with torch.enable_grad():
            _, taps = model.forward_taps(x)
    finally:
        for h in handles:
            h.remove()
        for m, flag in flags.items():
            m.training = flag
        for p, flag in needs.items():
            p.requires_grad_(flag)
    if "out" not in seen:
        raise PrivatenetError(f"tap {tap!r}: layer {path!r} returned no tensor in a forward "
                              "pass; fix the model's tap_layers")
    out, got = seen["out"], taps[tap]
    if got.numel() != out.numel() or got.untyped_storage().data_ptr() != \
            out.untyped_storage().data_ptr():
        raise PrivatenetError(f"tap {tap!r} is not the output of layer {path!r} (the forward "
                              "computes it otherwise); fix the model's tap_layers")
    if tuple(got.shape[1:]) != eraser.shape:
        raise PrivatenetError(f"tap {tap!r} has shape {tuple(got.shape[1:])} for "
                              f"{size[0]}x{size[1]} images but the eraser was fitted on "
                              f"{eraser.shape} features; pass the image_size the features "
                              "were extracted at")
    used = seen["params"]
    done = {id(m) for m in order[:seen["index"]]}  # the layer itself included
    done |= {id(m) for m in layer.modules()}
    pinned = []
    for name, module in model.named_modules():
        if id(module) not in done:
            continue
        own = [f"{name}.{k}" if name else k for k, _ in module.named_parameters(recurse=False)]
        if not own or any(k in used for k in own):
            pinned.append(name)
    frozen = [k for k in params if k in used]
    return frozen, pinned


class ErasedModel(TapWrapper):
    """A model with a fixed LEACE eraser at one tap; everything before the tap frozen.

    ``inner``: the wrapped model; ``eraser``: the :class:`TapEraser`, applied by a forward hook
    on the layer that computes ``tap`` (``inner.tap_layers[tap]``), so ``forward`` and
    ``forward_taps`` see erased features downstream, and ``forward_taps``'s ``tap`` output is
    the erased one (what an attacker at the tap reads). Taps before the erased one are
    unchanged; taps after it are computed from erased features (no guarantee holds for them).
    ``forward_from`` at a tap before the erased one starts before the eraser, which then runs
    after the cut (its hook is on a later layer).

    ``frozen``: names (in ``inner``) of the parameters the tap depends on, with
    ``requires_grad`` False, so an optimizer over ``parameters()`` does not move them (Adam's
    weight decay included: they get no gradient). ``pinned``: names of the modules run before
    the tap, kept in eval mode by :meth:`train` whatever the mode, so batch-norm statistics, ARM
    affinity estimates and dropout before the tap stay as when the eraser was fitted. Calling
    ``requires_grad_(True)`` or ``inner.train()`` directly undoes this; don't.

    Saved by ``save_module`` and rebuilt by ``model_from_config`` from :attr:`config`
    (``{"name": "erased", "num_classes", "inner", "tap", "shape", "rank", "image_size",
    "in_channels"}``) when ``inner`` came from the registry. Make one with :func:`erase_at_tap`.
    """

    def __init__(self, inner: nn.Module, *, tap: str, eraser: TapEraser,
                 image_size: int | tuple[int, int] | list[int], in_channels: int = 3) -> None:
        if not isinstance(eraser, TapEraser):
            raise PrivatenetError(f"eraser must be a TapEraser (from fit_eraser), got "
                                  f"{type(eraser).__name__}")
        if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
            raise PrivatenetError(f"in_channels must be an int >= 1, got {in_channels!r}")
        path = tap_layer(inner, tap)
        size = _image_size(image_size)
        ref = next(itertools.chain(inner.parameters(), inner.buffers()), None)
        if ref is not None:
            eraser.to(ref.device)
        frozen, pinned = _upstream(inner, tap, path, eraser, size, in_channels)
        super().__init__(inner, tap=tap, module=eraser, what="eraser")
        self.eraser = eraser
        self.image_size = list(image_size) if isinstance(image_size, (tuple, list)) \
            else image_size
        self.in_channels = in_channels
        self.frozen = tuple(frozen)
        self.pinned = tuple(pinned)
        for name in frozen:
            inner.get_parameter(name).requires_grad_(False)
        self.train(inner.training)

    @property
    def config(self) -> dict[str, Any]:
        """Plain-value config from which ``model_from_config`` rebuilds this model."""
        inner = self.inner_config()
        return {"name": "erased", "num_classes": inner["num_classes"], "inner": inner,
                "tap": self.tap, "shape": list(self.eraser.shape), "rank": self.eraser.rank,
                "image_size": self.image_size, "in_channels": self.in_channels}

    def extra_repr(self) -> str:
        return f"tap={self.tap!r}, frozen={len(self.frozen)} parameters"

    def train(self, mode: bool = True) -> ErasedModel:
        """Set the training mode; the modules before the tap stay in eval mode."""
        super().train(mode)
        for name in self.pinned:
            self.inner.get_submodule(name).training = False
        return self


def erase_at_tap(model: nn.Module, *, tap: str, eraser: TapEraser,
                 image_size: int | tuple[int, int] | None = None,
                 in_channels: int = 3) -> ErasedModel:
    """A copy of ``model`` with ``eraser`` fixed at ``tap`` and the layers before it frozen.

    ``model``: any model with taps and ``tap_layers`` (every registry model, or
    :func:`privatenet.models.taps.with_taps`); it is deep-copied and not modified.
    ``image_size`` (side, or (H, W)) and ``in_channels``: the input the eraser's features were
    extracted from, used by one probe forward that finds what lies before the tap and checks the
    eraser's shape; ``image_size`` defaults to the model config's. Fine-tune the result with
    ``fit(model=..., ...)`` and no regularizer: only the layers after the tap learn. See
    :class:`ErasedModel` and the module docstring for what is (not) guaranteed.
    """
    image_size = wrapped_image_size(model, image_size, who="erase_at_tap")
    tap_layer(model, tap)  # unknown tap: fail before copying
    return ErasedModel(copy.deepcopy(model), tap=tap, eraser=eraser, image_size=image_size,
                       in_channels=in_channels)


def erased_from_config(config: Mapping[str, Any], *, load_backbone_weights: bool = False
                       ) -> ErasedModel:
    """Rebuild an :class:`ErasedModel` from its ``config`` with an identity eraser of the saved
    shape and rank (``model_from_config`` calls this for ``name == "erased"``); load the
    checkpoint's state dict into it for the fitted eraser and weights."""
    inner = inner_from_config(config, keys=_CONFIG_KEYS, what="erased",
                              load_backbone_weights=load_backbone_weights)
    eraser = TapEraser(shape=config["shape"], rank=config["rank"])
    return ErasedModel(inner, tap=config["tap"], eraser=eraser, image_size=config["image_size"],
                       in_channels=config["in_channels"])


# model_from_config rebuilds saved erased networks with this (the package imports this module).
register_wrapper("erased", erased_from_config)
