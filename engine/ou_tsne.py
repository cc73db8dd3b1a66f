"""OU-T-SNE: the t-SNE grid classifier over the seven CNNs' scores (paper §3.3, SPEC §7).

Each object is the 7-vector of the seven models' P(lens), in the order of
:data:`lensengine.engine.specs.MODEL_NAMES`.  :meth:`OUTSNE.fit` embeds the
training 7-vectors in 2-D with openTSNE, cuts the embedding's bounding box into
a ``grid_size`` x ``grid_size`` grid and gives each cell the fraction of lenses
among the training points in it; empty cells take the mean of their defined
8 neighbours, repeated until every cell is defined (:func:`fill_empty_cells`).
A new object is placed into the fixed embedding and takes its cell's value.

Two ways to place new objects (``exact_transform``):

* exact: openTSNE's ``TSNEEmbedding.transform`` (the paper's "deriving their
  locations in the embedded space"); about 10^3 objects/s on two cores.
* fast (default): k-nearest-neighbour regression from the 7-D training vectors
  to their 2-D embedding (k = ``fast_neighbors``, median of the neighbours'
  positions, scipy k-d tree); about 10^4 objects/s per core.  See ``docs/ou-tsne.md`` for how
  often the two agree.

Objects the exact transform puts outside the grid's box, and objects the fast
path finds farther from every training vector than any training vector is from
its nearest neighbour, are *outside*: :meth:`OUTSNE.score_lens` returns the
mask (``return_outside=True``) and the engine sets
:attr:`lensengine.catalogs.flags.Flag.OUTSIDE_TSNE_GRID`.  Their score is the
nearest edge cell's value (``outside="clip"``) or the training lens fraction
(``outside="prior"``).

The fitted model is saved to a small ``.npz`` (:meth:`OUTSNE.save`): training
vectors, labels, embedding, grid, parameters and versions as JSON.  Loading
rebuilds openTSNE's affinity index from the stored vectors, so no pickle of
library internals is ever written.  openTSNE is imported only when needed.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from lensengine.engine.specs import MODEL_NAMES

__all__ = ["OUTSNE", "Placement", "fill_empty_cells", "FORMAT_VERSION"]

log = logging.getLogger(__name__)

#: Version of the ``.npz`` layout written by :meth:`OUTSNE.save`.
FORMAT_VERSION = 1

_N_FEATURES = len(MODEL_NAMES)
_EARLY_EXAGGERATION_ITER = 250


class Placement(NamedTuple):
    """Where :meth:`OUTSNE.locate` put each object."""

    coords: np.ndarray   # (n, 2) float64 embedding coordinates
    cells: np.ndarray    # (n, 2) intp grid cell (ix, iy), clipped into the grid
    scores: np.ndarray   # (n,) float64 OU-T-SNE P(lens)
    outside: np.ndarray  # (n,) bool, outside the grid / the training set's reach


def fill_empty_cells(values: np.ndarray, defined: np.ndarray, fallback: float = np.nan,
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Fill undefined grid cells with the mean of their defined 8 neighbours.

    The fill runs in synchronous passes: in each pass every undefined cell with
    at least one defined neighbour (of the eight around it) takes the mean of
    those neighbours' values *as they were at the start of the pass*, so the
    result does not depend on the order cells are visited.  Passes repeat until
    no cell changes.  On a rectangular grid every cell is reachable from any
    defined cell, so only a grid with no defined cell at all is left with
    unreachable cells; those get ``fallback``.

    Returns ``(filled, passes)``: the filled copy and, per cell, the pass that
    defined it (0 for cells defined on input, -1 for cells given ``fallback``).
    """
    values = np.asarray(values, dtype=np.float64)
    defined = np.asarray(defined, dtype=bool)
    if values.shape != defined.shape or values.ndim != 2:
        raise ValueError(f"values {values.shape} and defined {defined.shape} must be the same 2-D shape")
    out = np.where(defined, values, 0.0)
    done = defined.copy()
    passes = np.where(defined, 0, -1).astype(np.int32)
    step = 0
    while not done.all():
        step += 1
        v = np.pad(np.where(done, out, 0.0), 1)
        d = np.pad(done.astype(np.float64), 1)
        total = np.zeros_like(out)
        count = np.zeros_like(out)
        n0, n1 = out.shape
        for di in (-1, 0, 1):
            for dj in (-1, 0, 1):
                if di == 0 and dj == 0:
                    continue
                total += v[1 + di:1 + di + n0, 1 + dj:1 + dj + n1]
                count += d[1 + di:1 + di + n0, 1 + dj:1 + dj + n1]
        new = ~done & (count > 0)
        if not new.any():  # nothing reachable any more
            out[~done] = fallback
            break
        out[new] = total[new] / count[new]
        passes[new] = step
        done |= new
    return out, passes


class OUTSNE(ClassifierMixin, BaseEstimator):
    """OU-T-SNE: a t-SNE embedding of the seven models' scores, read through a grid of lens fractions.

    Parameters
    ----------
    grid_size : int
        Cells per side of the grid laid over the embedding's bounding box (paper: 100).
    perplexity : float
        t-SNE perplexity of the training embedding.
    random_state : int, RandomState or None
        Seeds openTSNE (PCA initialisation, approximate neighbours, optimisation).
    exact_transform : bool
        Place new objects with openTSNE's ``transform`` (slow, the paper's method)
        instead of the k-nearest-neighbour fast path.
    n_jobs : int
        Threads for openTSNE and the neighbour searches.
    smoothing : float
        Width (Gaussian sigma, in cells) of a smoothing applied to the lens and
        object counts before they are divided; 0 (default) is the paper's
        plain per-cell lens fraction.  Only cells holding training objects are
        "defined"; the rest are filled from their neighbours either way.
    prior_weight : float
        Pseudo-count pulling each cell's value towards the training lens fraction:
        ``(lenses + a * prior) / (objects + a)``.  0 (default) is the paper's
        fraction; a > 0 ranks a cell of 40 lenses above a cell of one, which is
        what recall-before-the-first-false-positive (TPR0) needs.
    outside : {"clip", "prior"}
        Score of an object outside the grid: the nearest edge cell's value, or the
        training set's lens fraction.  Outside objects are flagged either way.
    fast_neighbors : int
        k of the fast path (median position of the k nearest training vectors).
    n_iter : int
        t-SNE optimisation iterations after the 250 early-exaggeration ones.
    neighbors : str
        openTSNE's nearest-neighbour method for the affinities: "exact"
        (default, deterministic, fine for 7-D data up to ~10^5 objects) or
        "annoy"/"auto" for much larger training sets.
    transform_perplexity : float
        Perplexity openTSNE's ``transform`` uses to place new objects (its default 5).
    verbose : bool
        Log t-SNE progress (INFO) every 50 iterations.

    Attributes
    ----------
    X_train_ : (n, 7) float64 training score vectors.
    y_train_ : (n,) int8 training labels (1 lens, 0 non-lens).
    embedding_ : (n, 2) float64 training embedding (centred on its bounding box).
    bounds_ : (4,) float64 ``x0, x1, y0, y1`` of the grid's box.
    counts_, lens_counts_ : (grid_size, grid_size) training objects / lenses per cell.
    grid_ : (grid_size, grid_size) float64 cell values after smoothing and filling,
        indexed ``grid_[ix, iy]`` (x first).
    defined_ : (grid_size, grid_size) bool, cells holding training objects.
    fill_passes_ : (grid_size, grid_size) int32, pass of :func:`fill_empty_cells` that set each cell.
    prior_ : float, training lens fraction.
    fast_radius_ : float, largest training nearest-neighbour distance (7-D); fast-path
        objects farther than this from all training vectors are flagged outside.
    classes_ : array([0, 1]).
    """

    def __init__(self, grid_size: int = 100, perplexity: float = 30.0, random_state=None,
                 exact_transform: bool = False, n_jobs: int = 1, smoothing: float = 0.0, prior_weight: float = 0.0,
                 outside: str = "clip", fast_neighbors: int = 1, n_iter: int = 500,
                 neighbors: str = "exact", transform_perplexity: float = 5.0, verbose: bool = False):
        self.grid_size = grid_size
        self.perplexity = perplexity
        self.random_state = random_state
        self.exact_transform = exact_transform
        self.n_jobs = n_jobs
        self.smoothing = smoothing
        self.prior_weight = prior_weight
        self.outside = outside
        self.fast_neighbors = fast_neighbors
        self.n_iter = n_iter
        self.neighbors = neighbors
        self.transform_perplexity = transform_perplexity
        self.verbose = verbose

    # --- input checks ---------------------------------------------------------

    @staticmethod
    def _check_scores(P, what: str = "P") -> np.ndarray:
        X = np.asarray(P, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != _N_FEATURES:
            raise ValueError(f"{what} must be (n, {_N_FEATURES}) scores in the order {', '.join(MODEL_NAMES)}; "
                             f"got shape {X.shape}")
        bad = ~np.isfinite(X).all(axis=1)
        if bad.any():
            raise ValueError(f"{what} has {int(bad.sum())} rows with non-finite scores (first at row "
                             f"{int(np.flatnonzero(bad)[0])}); drop or impute them first")
        return np.ascontiguousarray(X)

    def _check_params(self) -> None:
        if int(self.grid_size) < 1:
            raise ValueError(f"grid_size must be >= 1, got {self.grid_size}")
        if self.outside not in ("clip", "prior"):
            raise ValueError(f"outside must be 'clip' or 'prior', got {self.outside!r}")
        if self.smoothing < 0:
            raise ValueError(f"smoothing must be >= 0, got {self.smoothing}")
        if self.prior_weight < 0:
            raise ValueError(f"prior_weight must be >= 0, got {self.prior_weight}")
        if int(self.fast_neighbors) < 1:
            raise ValueError(f"fast_neighbors must be >= 1, got {self.fast_neighbors}")

    # --- fitting ----------------------------------------------------------------

    def fit(self, P, y) -> "OUTSNE":
        """Embed the training score vectors ``P`` (n, 7) with labels ``y`` (n,) and build the grid."""
        from openTSNE import TSNE

        self._check_params()
        X = self._check_scores(P)
        y = np.asarray(y).ravel()
        if y.shape[0] != X.shape[0]:
            raise ValueError(f"y has {y.shape[0]} labels for {X.shape[0]} score vectors")
        if not np.isin(y, (0, 1)).all():
            raise ValueError(f"y must hold 0 (non-lens) and 1 (lens) only; found {np.unique(y)[:10]}")
        if X.shape[0] < 4:
            raise ValueError(f"need at least 4 training objects, got {X.shape[0]}")
        perplexity = min(float(self.perplexity), (X.shape[0] - 1) / 3.0)
        affinities = self._affinities(X, perplexity)
        callbacks = None
        if self.verbose:
            def callbacks(iteration, error, embedding):  # noqa: ARG001 - openTSNE's signature
                log.info("t-SNE iteration %d: KL divergence %.4f", iteration, error)
        tsne = TSNE(n_iter=int(self.n_iter), early_exaggeration_iter=_EARLY_EXAGGERATION_ITER,
                    negative_gradient_method="auto", n_jobs=self.n_jobs, random_state=self.random_state,
                    callbacks=callbacks, callbacks_every_iters=50)
        emb = np.array(tsne.fit(X, affinities=affinities), dtype=np.float64)
        emb -= (emb.max(axis=0) + emb.min(axis=0)) / 2  # openTSNE.transform re-centres its reference

        self.X_train_ = X
        self.y_train_ = y.astype(np.int8)
        self.embedding_ = emb
        self.perplexity_ = perplexity
        self.classes_ = np.array([0, 1])
        self.n_features_in_ = _N_FEATURES
        self._build_grid()
        self._nn = None
        dist, _ = self._neighbours(X, 2)
        self.fast_radius_ = float(dist[:, -1].max())
        self._tsne = self._make_tsne_embedding(affinities)
        return self

    def _affinities(self, X: np.ndarray, perplexity: float):
        from openTSNE.affinity import PerplexityBasedNN

        return PerplexityBasedNN(X, perplexity=perplexity, method=self.neighbors, n_jobs=self.n_jobs,
                                 random_state=self.random_state, verbose=False)

    def _make_tsne_embedding(self, affinities):
        """The openTSNE reference embedding used by ``transform`` (built the same way by fit and load)."""
        from openTSNE import TSNEEmbedding

        return TSNEEmbedding(self.embedding_.copy(), affinities, negative_gradient_method="fft",
                             n_jobs=self.n_jobs, random_state=self.random_state)

    def _build_grid(self) -> None:
        g = int(self.grid_size)
        emb = self.embedding_
        x0, y0 = emb.min(axis=0)
        x1, y1 = emb.max(axis=0)
        # a degenerate (zero-width) axis still gets a box one unit wide
        if x1 <= x0:
            x0, x1 = x0 - 0.5, x1 + 0.5
        if y1 <= y0:
            y0, y1 = y0 - 0.5, y1 + 0.5
        self.bounds_ = np.array([x0, x1, y0, y1], dtype=np.float64)
        ix, iy, _ = self._cells(emb)
        counts = np.zeros((g, g), dtype=np.int64)
        lens = np.zeros((g, g), dtype=np.int64)
        np.add.at(counts, (ix, iy), 1)
        np.add.at(lens, (ix, iy), self.y_train_.astype(np.int64))
        self.counts_ = counts
        self.lens_counts_ = lens
        self.prior_ = float(self.y_train_.mean())
        self.defined_ = counts > 0
        if self.smoothing > 0:
            from scipy.ndimage import gaussian_filter

            c = gaussian_filter(counts.astype(np.float64), self.smoothing, mode="constant")
            n = gaussian_filter(lens.astype(np.float64), self.smoothing, mode="constant")
        else:
            c, n = counts.astype(np.float64), lens.astype(np.float64)
        a = float(self.prior_weight)
        n, c = n + a * self.prior_, c + a
        values = np.divide(n, c, out=np.zeros_like(c), where=self.defined_ & (c > 0))
        self.grid_, self.fill_passes_ = fill_empty_cells(values, self.defined_, fallback=self.prior_)

    def _fast_index(self):
        """The 7-D k-d tree of the fast path (scipy's cKDTree; built on first use, not pickled)."""
        tree = self.__dict__.get("_nn")
        if tree is None:
            from scipy.spatial import cKDTree

            tree = self._nn = cKDTree(self.X_train_)
        return tree

    def _neighbours(self, X: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        k = min(int(k), len(self.X_train_))
        dist, idx = self._fast_index().query(X, k=k, workers=self.n_jobs)
        return dist.reshape(len(X), k), idx.reshape(len(X), k)

    def _reference(self):
        """openTSNE's reference embedding for the exact path (rebuilt on first use; not pickled)."""
        ref = self.__dict__.get("_tsne")
        if ref is None:
            ref = self._make_tsne_embedding(self._affinities(self.X_train_, self.perplexity_))
            self._tsne = ref
        return ref

    def __getstate__(self):
        # the openTSNE index of 5e4 objects pickles to ~200 MB; rebuild it where it is used
        state = super().__getstate__()
        state.pop("_tsne", None)
        state.pop("_nn", None)
        return state

    # --- placing new objects ------------------------------------------------------

    def _cells(self, coords: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Cell indices (clipped to the grid) and the outside-the-box mask for 2-D coordinates."""
        g = int(self.grid_size)
        x0, x1, y0, y1 = self.bounds_
        fx = (coords[:, 0] - x0) / (x1 - x0) * g
        fy = (coords[:, 1] - y0) / (y1 - y0) * g
        outside = (fx < 0) | (fx > g) | (fy < 0) | (fy > g)
        ix = np.clip(np.floor(fx), 0, g - 1).astype(np.intp)
        iy = np.clip(np.floor(fy), 0, g - 1).astype(np.intp)
        return ix, iy, outside

    def _place(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """2-D coordinates of new objects and a mask of those outside what the training set covers."""
        if len(X) == 0:
            return np.empty((0, 2)), np.zeros(0, dtype=bool)
        if self.exact_transform:
            ref = self._reference()
            shift = (np.max(ref, axis=0) + np.min(ref, axis=0)) / 2  # transform re-centres ref by this
            coords = np.array(ref.transform(X, perplexity=self.transform_perplexity), dtype=np.float64)
            coords += np.asarray(shift)
            return coords, self._cells(coords)[2]
        dist, idx = self._neighbours(X, self.fast_neighbors)
        emb = self.embedding_
        coords = emb[idx[:, 0]] if idx.shape[1] == 1 else np.median(emb[idx], axis=1)
        return coords, dist[:, 0] > self.fast_radius_

    def transform(self, P) -> np.ndarray:
        """(n, 2) positions of score vectors ``P`` (n, 7) in the fitted embedding."""
        check_is_fitted(self, "grid_")
        return self._place(self._check_scores(P))[0]

    def locate(self, P, missing: str = "raise") -> Placement:
        """Place score vectors ``P`` (n, 7): coordinates, grid cells, scores and the outside mask at once.

        ``missing="raise"`` (default) refuses rows with a non-finite score; ``missing="nan"``
        gives them NaN coordinates and score, cell (-1, -1) and ``outside`` False (the engine
        uses this for objects some model could not score).
        """
        check_is_fitted(self, "grid_")
        if missing not in ("raise", "nan"):
            raise ValueError(f"missing must be 'raise' or 'nan', got {missing!r}")
        X = np.asarray(P, dtype=np.float64)
        ok = np.isfinite(X).all(axis=1) if (missing == "nan" and X.ndim == 2) else None
        if ok is not None and not ok.all():
            n = X.shape[0]
            part = self.locate(X[ok])
            coords = np.full((n, 2), np.nan)
            cells = np.full((n, 2), -1, dtype=np.intp)
            scores = np.full(n, np.nan)
            outside = np.zeros(n, dtype=bool)
            coords[ok], cells[ok], scores[ok], outside[ok] = part
            return Placement(coords, cells, scores, outside)
        coords, outside = self._place(self._check_scores(X))
        ix, iy, _ = self._cells(coords)
        scores = self.grid_[ix, iy].copy()
        if self.outside == "prior":
            scores[outside] = self.prior_
        return Placement(coords, np.column_stack([ix, iy]), scores, outside)

    def score_lens(self, P, return_outside: bool = False, missing: str = "raise"):
        """OU-T-SNE's P(lens) for score vectors ``P`` (n, 7): the value of the cell each one lands in.

        With ``return_outside=True`` returns ``(scores, outside)`` where ``outside``
        is the (n,) bool mask of objects outside the grid (see the module docstring);
        the engine maps it to ``Flag.OUTSIDE_TSNE_GRID``.  ``missing`` as in :meth:`locate`.
        """
        where = self.locate(P, missing=missing)
        return (where.scores, where.outside) if return_outside else where.scores

    def predict_proba(self, P) -> np.ndarray:
        """(n, 2) class probabilities ``[P(non-lens), P(lens)]`` (scikit-learn layout)."""
        s = self.score_lens(P)
        return np.column_stack([1.0 - s, s])

    def predict(self, P) -> np.ndarray:
        """(n,) int labels: 1 where OU-T-SNE's P(lens) >= 0.5 (SPEC §7.5)."""
        return (self.score_lens(P) >= 0.5).astype(np.int64)

    def decision_function(self, P) -> np.ndarray:
        """Same as :meth:`score_lens` (for scikit-learn scorers such as ROC AUC)."""
        return self.score_lens(P)

    # --- persistence -------------------------------------------------------------

    def _meta(self) -> dict:
        import sklearn

        try:
            import openTSNE

            tsne_version = openTSNE.__version__
        except ImportError:  # pragma: no cover - openTSNE is a core dependency
            tsne_version = None
        from lensengine import __version__

        return {"format": "lensengine.ou_tsne", "format_version": FORMAT_VERSION,
                "params": self.get_params(deep=False), "model_names": list(MODEL_NAMES),
                "perplexity_used": self.perplexity_, "prior": self.prior_, "fast_radius": self.fast_radius_,
                "versions": {"lensengine": __version__, "openTSNE": tsne_version,
                             "scikit-learn": sklearn.__version__, "numpy": np.__version__}}

    def save(self, path) -> Path:
        """Write the fitted model to ``path`` (.npz; temporary file + rename).  Returns the path."""
        check_is_fitted(self, "grid_")
        path = Path(path)
        meta = self._meta()
        if not isinstance(meta["params"]["random_state"], (int, type(None))):
            meta["params"]["random_state"] = None  # a RandomState object does not go into JSON
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as fh:
            np.savez_compressed(
                fh, meta=np.array(json.dumps(meta)), X_train=self.X_train_, y_train=self.y_train_,
                embedding=self.embedding_, bounds=self.bounds_, counts=self.counts_.astype(np.int32),
                lens_counts=self.lens_counts_.astype(np.int32), grid=self.grid_,
                fill_passes=self.fill_passes_)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path) -> "OUTSNE":
        """Read a model written by :meth:`save` and rebuild openTSNE's index from the stored vectors."""
        path = Path(path)
        with np.load(path, allow_pickle=False) as z:
            if "meta" not in z.files:
                raise ValueError(f"{path} is not an OU-T-SNE model (no 'meta' entry)")
            meta = json.loads(str(z["meta"]))
            arrays = {k: z[k] for k in z.files if k != "meta"}
        if meta.get("format") != "lensengine.ou_tsne" or meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{path}: expected an OU-T-SNE model of format version {FORMAT_VERSION}, found "
                             f"{meta.get('format')!r} version {meta.get('format_version')!r}")
        if list(meta["model_names"]) != list(MODEL_NAMES):
            raise ValueError(f"{path}: model order {meta['model_names']} does not match {list(MODEL_NAMES)}")
        import openTSNE

        saved = meta["versions"].get("openTSNE")
        if saved != openTSNE.__version__:
            log.warning("%s was fitted with openTSNE %s, running %s: exact transforms may differ slightly",
                        path, saved, openTSNE.__version__)
        model = cls(**meta["params"])
        model.X_train_ = arrays["X_train"].astype(np.float64)
        model.y_train_ = arrays["y_train"].astype(np.int8)
        model.embedding_ = arrays["embedding"].astype(np.float64)
        model.bounds_ = arrays["bounds"]
        model.counts_ = arrays["counts"].astype(np.int64)
        model.lens_counts_ = arrays["lens_counts"].astype(np.int64)
        model.grid_ = arrays["grid"]
        model.fill_passes_ = arrays["fill_passes"]
        model.defined_ = model.counts_ > 0
        model.prior_ = float(meta["prior"])
        model.perplexity_ = float(meta["perplexity_used"])
        model.fast_radius_ = float(meta["fast_radius"])
        model.classes_ = np.array([0, 1])
        model.n_features_in_ = _N_FEATURES
        return model  # the k-d tree and openTSNE's index are rebuilt on first use

    # --- plots ---------------------------------------------------------------------

    def plot(self, path, *, title: str | None = None) -> Path:
        """PNG of the training embedding coloured by label beside the grid (cf. the paper's Fig. 9)."""
        from lensengine.engine._tsne_plot import plot_model

        check_is_fitted(self, "grid_")
        return plot_model(self, path, title=title)
