"""US -> X-ray surrogate: predict a hip's acetabular index (AI) from its ultrasound, with a one-sided upper bound.

Numpy only (no torch, no scikit-learn). Two models with the same MAPIE-shaped interface:

* ``SurrogateAI``: ridge regression of AI on the ultrasound bundle's 512-d ``features`` output (mean over a
  hip's frames), features standardised on the fit split, ridge strength chosen by grouped K-fold
  cross-validation on the fit split (groups = patients, so both hips of a patient share a fold).
* ``AlphaBaselineAI``: the 1-d comparison, a least-squares line ``AI ~ a * alpha_hat + b`` on the bundle's
  predicted Graf alpha (``conformal.fit_affine``).

Both are fitted on one split, then ``calibrate(x, ai, delta, groups)`` computes the radius of a one-sided
split-conformal **upper** bound on a disjoint split (disjoint by patient), with the exact integer rank of
``sonogate.calibration.conformal.one_sided_radius``: scores ``s = ai - ai_hat``, radius r = the k-th smallest
score, ``k = ceil((n + 1)(1 - delta))``, bound ``ai_hat + r`` (``+inf`` when k > n). With ``groups`` the unit
is the group (patient): its score is the max over its hips, so for a new patient exchangeable with the
calibration patients P(any of its hips has AI > its bound) <= delta (as the X-ray calibration does per
radiograph, docs/xray.md); without groups the unit is the hip.

A fitted surrogate is saved as a small JSON (weights, standardisation, radius, delta, n, k) bound to the
sha256 of the ultrasound bundle's manifest it was fitted on; loading it against another bundle raises
``SurrogateError``. What the bound guarantees is only as good as the AI labels it was calibrated on: on the
paired phantom (``sonogate.phantom.paired``) those come from an assumed alpha -> AI line, not from radiographs.

Example::

    model = SurrogateAI(bundle_sha256=bundle.bundle_hash).fit(f_fit, ai_fit, groups=pid_fit)
    model.calibrate(f_cal, ai_cal, delta=0.1, groups=pid_cal)
    ai_hat, ai_upper = model.predict_bound(f_new)
    model.save("surrogate_ai.json"); SurrogateAI.load("surrogate_ai.json", bundle.bundle_hash)
"""

from __future__ import annotations

import json
import math
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sonogate.calibration.conformal import DeltaLike, as_fraction, fit_affine, one_sided_radius, one_sided_scores
from sonogate.errors import CalibrationError

FORMAT = "sonogate-surrogate-ai"
FORMAT_VERSION = 1
DEFAULT_RIDGE_GRID: tuple[float, ...] = tuple(float(x) for x in np.logspace(-2, 6, 33))
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class SurrogateError(CalibrationError):
    """A surrogate file is missing, malformed, or was fitted on another ultrasound bundle."""


def _as_matrix(x, name: str = "features") -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise ValueError(f"{name} must be (n, d) with n >= 1, got shape {np.shape(x)}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite (drop hips without a usable frame first)")
    return arr


def _as_vector(y, n: int, name: str = "ai") -> np.ndarray:
    arr = np.asarray(y, dtype=np.float64).reshape(-1)
    if arr.size != n:
        raise ValueError(f"{name} has {arr.size} values for {n} rows")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite")
    return arr


def _group_ids(groups, n: int) -> np.ndarray:
    """Integer group index per row (each row its own group when ``groups`` is None)."""
    if groups is None:
        return np.arange(n)
    g = np.asarray(groups).reshape(-1)
    if g.size != n:
        raise ValueError(f"groups has {g.size} values for {n} rows")
    return np.unique(g, return_inverse=True)[1].reshape(-1)


def grouped_folds(groups, n: int, n_folds: int, seed: int = 0) -> list[np.ndarray]:
    """Row indices of each held-out fold: whole groups, randomly assigned (seeded), folds as even as groups allow."""
    ids = _group_ids(groups, n)
    n_groups = int(ids.max()) + 1 if n else 0
    n_folds = min(int(n_folds), n_groups)
    if n_folds < 2:
        raise ValueError(f"cross-validation needs at least 2 groups, got {n_groups}")
    order = np.random.default_rng(seed).permutation(n_groups)
    fold_of_group = np.empty(n_groups, dtype=np.int64)
    fold_of_group[order] = np.arange(n_groups) % n_folds
    fold = fold_of_group[ids]
    return [np.nonzero(fold == f)[0] for f in range(n_folds)]


def _standardise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    # constant features carry nothing: centre them to 0 and leave their scale at 1
    scale = np.where(scale > 1e-12 * np.maximum(1.0, np.abs(mean)), scale, 1.0)
    return mean, scale


def _ridge_path(z: np.ndarray, yc: np.ndarray, lambdas: np.ndarray) -> np.ndarray:
    """Ridge weights (len(lambdas), d) of centred ``yc`` on standardised ``z`` for every strength, one SVD."""
    u, s, vt = np.linalg.svd(z, full_matrices=False)
    uty = u.T @ yc
    shrink = s[None, :] / (s[None, :] ** 2 + lambdas[:, None])  # (L, r)
    return (shrink * uty[None, :]) @ vt


class _UpperBoundSurrogate(ABC):
    """Shared calibration, bound and JSON logic. Subclasses implement ``fit``, ``predict`` and the model dict."""

    kind = ""
    input_name = ""

    def __init__(self, bundle_sha256: str | None = None):
        self.bundle_sha256 = bundle_sha256
        self.meta: dict[str, Any] = {}

    # -- calibration -------------------------------------------------------------------------------------
    def calibrate(self, x, ai, delta: DeltaLike = 0.1, groups=None):
        """One-sided split-conformal upper bound on a calibration split disjoint (by patient) from the fit split.

        Scores ``ai - predict(x)``; with ``groups`` the max per group is the unit's score. Sets ``radius_``
        (None = infinite), ``k_``, ``n_`` (units), ``n_rows_``, ``unit_``, ``delta``. Returns self.
        """
        as_fraction(delta)
        pred = self.predict(x)
        y = _as_vector(ai, pred.size)
        scores = one_sided_scores(pred, y, "upper")
        if groups is not None:
            ids = _group_ids(groups, scores.size)
            unit_scores = np.full(int(ids.max()) + 1, -np.inf)
            np.maximum.at(unit_scores, ids, scores)
            scores, unit = unit_scores, "group (max over its rows)"
        else:
            unit = "row"
        self.radius_, self.k_ = one_sided_radius(scores, delta)
        self.n_ = int(scores.size)
        self.n_rows_ = int(pred.size)
        self.unit_ = unit
        self.delta = delta
        return self

    @property
    def calibrated(self) -> bool:
        return hasattr(self, "radius_")

    def predict_bound(self, x) -> tuple[np.ndarray, np.ndarray]:
        """``(ai_hat, ai_upper_bound)``; the bound is +inf when the radius is infinite."""
        if not self.calibrated:
            raise RuntimeError("call calibrate() before predict_bound()")
        ai_hat = self.predict(x)
        if self.radius_ is None:
            return ai_hat, np.full_like(ai_hat, np.inf)
        return ai_hat, ai_hat + self.radius_

    # -- JSON --------------------------------------------------------------------------------------------
    @abstractmethod
    def _model_dict(self) -> dict[str, Any]:
        """The fitted model's own parameters, for ``to_dict``."""

    @abstractmethod
    def _set_model(self, model: dict[str, Any]) -> None:
        """Restore what ``_model_dict`` wrote."""

    def to_dict(self) -> dict[str, Any]:
        if not hasattr(self, "n_fit_"):
            raise RuntimeError("call fit() before saving")
        calibration = None
        if self.calibrated:
            calibration = {
                "side": "upper",
                "delta": float(as_fraction(self.delta)),
                "delta_exact": str(as_fraction(self.delta)),
                "radius": self.radius_,
                "k": self.k_,
                "n": self.n_,
                "n_rows": self.n_rows_,
                "unit": self.unit_,
                "bound": "ai_hat + radius (radius null: infinite, never reassures)",
            }
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "target": "ai_deg",
            "input": self.input_name,
            "bundle_sha256": self.bundle_sha256,
            "model": self._model_dict(),
            "calibration": calibration,
            "meta": self.meta,
        }

    def save(self, path: str | Path) -> Path:
        """Write the JSON. Needs ``bundle_sha256`` (the ultrasound bundle the inputs came from)."""
        if not (isinstance(self.bundle_sha256, str) and _SHA256.match(self.bundle_sha256)):
            raise SurrogateError(
                f"surrogate needs the sha256 of its ultrasound bundle to be saved, got {self.bundle_sha256!r}"
            )
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        return path

    @classmethod
    def from_dict(cls, obj: dict[str, Any], bundle_sha256: str, source: str = "surrogate") -> _UpperBoundSurrogate:
        if not isinstance(obj, dict) or obj.get("format") != FORMAT:
            raise SurrogateError(f"{source} is not a {FORMAT} file")
        if obj.get("format_version") != FORMAT_VERSION:
            raise SurrogateError(
                f"{source} has format_version {obj.get('format_version')!r}, expected {FORMAT_VERSION}"
            )
        target_cls = cls if cls.kind else _KINDS.get(str(obj.get("kind")))
        if target_cls is None or obj.get("kind") != target_cls.kind:
            raise SurrogateError(f"{source} holds a {obj.get('kind')!r} surrogate, not {cls.kind or 'a known one'}")
        bound_to = obj.get("bundle_sha256")
        if bound_to != bundle_sha256:
            raise SurrogateError(
                f"{source} was fitted on ultrasound bundle {str(bound_to)[:12]}..., not on this "
                f"bundle {str(bundle_sha256)[:12]}...: refit the surrogate for this bundle"
            )
        model = target_cls(bundle_sha256=bound_to)
        try:
            model._set_model(obj["model"])
            cal = obj.get("calibration")
            if cal is not None:
                radius = cal["radius"]
                model.radius_ = None if radius is None else float(radius)
                model.k_, model.n_, model.n_rows_ = int(cal["k"]), int(cal["n"]), int(cal["n_rows"])
                model.unit_ = str(cal["unit"])
                model.delta = str(cal.get("delta_exact", cal["delta"]))
                as_fraction(model.delta)
        except (KeyError, TypeError, ValueError) as exc:
            raise SurrogateError(f"{source} is malformed ({type(exc).__name__}: {exc})") from None
        model.meta = dict(obj.get("meta") or {})
        return model

    @classmethod
    def load(cls, path: str | Path, bundle_sha256: str) -> _UpperBoundSurrogate:
        """Read a surrogate JSON; refuses one fitted on another bundle (``SurrogateError``, one line)."""
        path = Path(path)
        try:
            obj = json.loads(path.read_text())
        except OSError as exc:
            raise SurrogateError(f"cannot read surrogate {path}: {exc.strerror or exc}") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SurrogateError(f"surrogate {path} is not valid JSON ({exc})") from None
        return cls.from_dict(obj, bundle_sha256, source=f"surrogate {path}")


class SurrogateAI(_UpperBoundSurrogate):
    """Ridge regression of AI on standardised ultrasound features, ridge strength by grouped cross-validation.

    ``alpha_ridge``: a fixed ridge strength, or None to choose it from ``ridge_grid`` by ``n_folds``-fold
    cross-validation grouped by ``groups`` (mean squared error of held-out rows; standardisation refitted inside
    each fold). Attributes after ``fit``: ``coef_`` (d,) on the standardised scale, ``intercept_``,
    ``feature_mean_``, ``feature_scale_``, ``alpha_ridge_``, ``cv_`` ({"grid", "mse"} or None), ``n_fit_``.
    """

    kind = "ridge_features"
    input_name = "ultrasound bundle output 'features', mean over the hip's frames"

    def __init__(
        self,
        alpha_ridge: float | None = None,
        ridge_grid: Sequence[float] = DEFAULT_RIDGE_GRID,
        n_folds: int = 5,
        seed: int = 0,
        bundle_sha256: str | None = None,
    ):
        super().__init__(bundle_sha256)
        if alpha_ridge is not None and not (math.isfinite(alpha_ridge) and alpha_ridge >= 0):
            raise ValueError(f"alpha_ridge must be finite and >= 0, got {alpha_ridge!r}")
        grid = np.asarray(ridge_grid, dtype=np.float64).reshape(-1)
        if grid.size == 0 or not np.all(np.isfinite(grid) & (grid >= 0)):
            raise ValueError("ridge_grid must hold finite strengths >= 0")
        self.alpha_ridge = alpha_ridge
        self.ridge_grid = grid
        self.n_folds = int(n_folds)
        self.seed = int(seed)

    def cross_validate(self, x: np.ndarray, y: np.ndarray, groups=None) -> np.ndarray:
        """Held-out mean squared error for every strength of ``ridge_grid`` (grouped K-fold)."""
        sq_err = np.zeros(self.ridge_grid.size)
        for held in grouped_folds(groups, y.size, self.n_folds, self.seed):
            train = np.ones(y.size, dtype=bool)
            train[held] = False
            mean, scale = _standardise(x[train])
            y_mean = y[train].mean()
            weights = _ridge_path((x[train] - mean) / scale, y[train] - y_mean, self.ridge_grid)
            pred = ((x[held] - mean) / scale) @ weights.T + y_mean  # (held, L)
            sq_err += np.sum((pred - y[held][:, None]) ** 2, axis=0)
        return sq_err / y.size

    def fit(self, features, ai, groups=None) -> SurrogateAI:
        x = _as_matrix(features)
        y = _as_vector(ai, x.shape[0])
        if self.alpha_ridge is None:
            mse = self.cross_validate(x, y, groups)
            best = int(np.argmin(mse))
            self.alpha_ridge_ = float(self.ridge_grid[best])
            self.cv_ = {
                "grid": self.ridge_grid.tolist(),
                "mse": mse.tolist(),
                "n_folds": self.n_folds,
                "best_mse": float(mse[best]),
                "grouped": groups is not None,
                "at_grid_edge": best in (0, self.ridge_grid.size - 1),
            }
        else:
            self.alpha_ridge_, self.cv_ = float(self.alpha_ridge), None
        self.feature_mean_, self.feature_scale_ = _standardise(x)
        self.intercept_ = float(y.mean())
        z = (x - self.feature_mean_) / self.feature_scale_
        self.coef_ = _ridge_path(z, y - self.intercept_, np.array([self.alpha_ridge_]))[0]
        self.n_fit_ = int(y.size)
        return self

    def predict(self, features) -> np.ndarray:
        if not hasattr(self, "coef_"):
            raise RuntimeError("call fit() before predict()")
        x = _as_matrix(features)
        if x.shape[1] != self.coef_.size:
            raise ValueError(f"features have {x.shape[1]} columns, the surrogate was fitted on {self.coef_.size}")
        return ((x - self.feature_mean_) / self.feature_scale_) @ self.coef_ + self.intercept_

    def _model_dict(self) -> dict[str, Any]:
        return {
            "ridge_alpha": self.alpha_ridge_,
            "intercept": self.intercept_,
            "coef": self.coef_.tolist(),
            "feature_mean": self.feature_mean_.tolist(),
            "feature_scale": self.feature_scale_.tolist(),
            "n_fit": self.n_fit_,
            "cv": self.cv_,
            "formula": "ai_hat = ((features - feature_mean) / feature_scale) . coef + intercept",
        }

    def _set_model(self, model: dict[str, Any]) -> None:
        self.coef_ = np.asarray(model["coef"], dtype=np.float64)
        self.feature_mean_ = np.asarray(model["feature_mean"], dtype=np.float64)
        self.feature_scale_ = np.asarray(model["feature_scale"], dtype=np.float64)
        if not (self.coef_.ndim == 1 and self.coef_.shape == self.feature_mean_.shape == self.feature_scale_.shape):
            raise ValueError("coef, feature_mean and feature_scale must be vectors of one length")
        if not (
            np.all(np.isfinite(self.coef_))
            and np.all(np.isfinite(self.feature_mean_))
            and np.all(self.feature_scale_ > 0)
        ):
            raise ValueError("weights must be finite and scales > 0")
        self.intercept_ = float(model["intercept"])
        self.alpha_ridge_ = self.alpha_ridge = float(model["ridge_alpha"])
        self.n_fit_ = int(model["n_fit"])
        self.cv_ = model.get("cv")


class AlphaBaselineAI(_UpperBoundSurrogate):
    """1-d baseline: least-squares line ``ai_hat = a * alpha + b`` on one number per hip (the bundle's predicted
    alpha, or the true alpha for an oracle). ``groups`` in ``fit`` is accepted for symmetry and ignored."""

    kind = "linear_alpha"
    input_name = "ultrasound bundle output 'alpha_deg', mean over the hip's frames"

    def fit(self, alpha, ai, groups=None) -> AlphaBaselineAI:
        x = _as_matrix(np.asarray(alpha, dtype=np.float64).reshape(-1, 1), "alpha")
        y = _as_vector(ai, x.shape[0])
        self.a_, self.b_ = fit_affine(x[:, 0], y)
        self.n_fit_ = int(y.size)
        return self

    def predict(self, alpha) -> np.ndarray:
        if not hasattr(self, "a_"):
            raise RuntimeError("call fit() before predict()")
        x = _as_matrix(np.asarray(alpha, dtype=np.float64).reshape(-1, 1), "alpha")
        return self.a_ * x[:, 0] + self.b_

    def _model_dict(self) -> dict[str, Any]:
        return {"a": self.a_, "b": self.b_, "n_fit": self.n_fit_, "formula": "ai_hat = a * alpha + b"}

    def _set_model(self, model: dict[str, Any]) -> None:
        self.a_, self.b_ = float(model["a"]), float(model["b"])
        if not (math.isfinite(self.a_) and math.isfinite(self.b_)):
            raise ValueError("a and b must be finite")
        self.n_fit_ = int(model["n_fit"])


_KINDS: dict[str, type[_UpperBoundSurrogate]] = {SurrogateAI.kind: SurrogateAI, AlphaBaselineAI.kind: AlphaBaselineAI}


def load_surrogate(path: str | Path, bundle_sha256: str) -> _UpperBoundSurrogate:
    """Load either kind of surrogate JSON (``SurrogateAI`` or ``AlphaBaselineAI``) bound to ``bundle_sha256``."""
    return _UpperBoundSurrogate.load(path, bundle_sha256)
