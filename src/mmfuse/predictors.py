"""Classic models on fused features: ``outputs[].predictor``.

After neural training, the fused vector of every training row (what the heads read) is computed
once, and a scikit-learn estimator is fitted on those vectors for each output that names one:

===================  ===============================================  ========================
type                 estimator                                        outputs
===================  ===============================================  ========================
linear               ``StandardScaler`` + ``Ridge``                   number
logistic             ``StandardScaler`` + ``LogisticRegression``      binary, category
random_forest        ``RandomForestRegressor`` / ``...Classifier``    number, binary, category
gradient_boosting    ``HistGradientBoostingRegressor`` / ``...Cl.``   number, binary, category
===================  ===============================================  ========================

A predictor answers in its head's output space (a number output's normalised value, a binary
output's logit, a category output's log-probabilities), so the head's postprocessing, metrics
and the export treat both alike. It is stored in the bundle with skops (``predictors/NAME.skops``,
covered by the manifest's hashes) and loaded back only when every type the file names is on
:data:`TRUSTED` (an explicit list: skops' own default trust is not relied on): no pickle is
ever run.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from .config_base import did_you_mean
from .errors import BundleError, DataError, require
from .outputs import output_type as output_kind

# (predictor, task) -> estimator; the task is "regression" for output types that declare
# ``regression`` (number), else "classification" (outputs/kind.py)
ESTIMATORS = {
    ("linear", "regression"): "sklearn.linear_model.Ridge",
    ("logistic", "classification"): "sklearn.linear_model.LogisticRegression",
    ("random_forest", "regression"): "sklearn.ensemble.RandomForestRegressor",
    ("random_forest", "classification"): "sklearn.ensemble.RandomForestClassifier",
    ("gradient_boosting", "regression"): "sklearn.ensemble.HistGradientBoostingRegressor",
    ("gradient_boosting", "classification"): "sklearn.ensemble.HistGradientBoostingClassifier",
}
PREDICTORS = tuple(dict.fromkeys(name for name, _ in ESTIMATORS))  # the predictor types
DEFAULTS = {"logistic": {"max_iter": 2000}, "random_forest": {"n_estimators": 200}}
SCALED = ("linear", "logistic")  # fitted on standardised features

# every type a stored predictor may hold: the estimators above and what they are made of
TRUSTED = frozenset({
    "builtins.dict", "builtins.list", "builtins.str", "builtins.tuple", "builtins.int",
    "builtins.float", "builtins.bool", "builtins.NoneType",
    "numpy.ndarray", "numpy.float32", "numpy.float64", "numpy.int32", "numpy.int64",
    "numpy.uint8", "numpy.uint32", "numpy.uint64", "numpy.bool_", "numpy.dtype",
    "numpy.random._generator.Generator", "numpy.random._pcg64.PCG64",
    "numpy.random.mtrand.RandomState", "numpy.random._mt19937.MT19937",
    "sklearn.pipeline.Pipeline",
    "sklearn.preprocessing._data.StandardScaler",
    "sklearn.preprocessing._label.LabelEncoder",
    "sklearn.linear_model._ridge.Ridge",
    "sklearn.linear_model._logistic.LogisticRegression",
    "sklearn.ensemble._forest.RandomForestRegressor",
    "sklearn.ensemble._forest.RandomForestClassifier",
    "sklearn.tree._classes.DecisionTreeRegressor",
    "sklearn.tree._classes.DecisionTreeClassifier",
    "sklearn.tree._tree.Tree",
    "sklearn.ensemble._hist_gradient_boosting.gradient_boosting.HistGradientBoostingRegressor",
    "sklearn.ensemble._hist_gradient_boosting.gradient_boosting.HistGradientBoostingClassifier",
    "sklearn.ensemble._hist_gradient_boosting.binning._BinMapper",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn._loss.loss.HalfSquaredError", "sklearn._loss.loss.HalfBinomialLoss",
    "sklearn._loss.loss.HalfMultinomialLoss", "sklearn._loss.link.IdentityLink",
    "sklearn._loss.link.LogitLink", "sklearn._loss.link.MultinomialLogit",
    "sklearn._loss.link.Interval", "sklearn._loss._loss.CyHalfSquaredError",
    "sklearn._loss._loss.CyHalfBinomialLoss", "sklearn._loss._loss.CyHalfMultinomialLoss",
})


def stored_types(data: bytes) -> set[str]:
    """Every ``module.class`` that a skops file's schema names (what loading would build)."""
    import io
    import json
    import zipfile

    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "__class__" in node and "__module__" in node:
                found.add(f"{node['__module__']}.{node['__class__']}")
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        walk(json.loads(archive.read("schema.json")))
    return found


def task(kind: str) -> str:
    """``regression`` or ``classification``: what an estimator for an output of type ``kind``
    does."""
    return "regression" if output_kind(kind).regression else "classification"


def estimator(name: str, output_type: str, options: dict, seed: int = 0) -> Any:
    """An unfitted estimator for predictor ``name`` on an output of ``output_type``.

    Raises:
        ValueError: an option the estimator does not have, or a bad value (named).
    """
    require("sklearn", "predictors", "classic predictors on fused features")
    import importlib

    module, _, cls_name = ESTIMATORS[(name, task(output_type))].rpartition(".")
    cls = getattr(importlib.import_module(module), cls_name)
    params = {**DEFAULTS.get(name, {}), **options}
    if "random_state" in cls().get_params() and "random_state" not in params:
        params["random_state"] = seed
    allowed = sorted(cls().get_params())
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(f"predictor {name!r}: unknown option {unknown[0]!r}"
                         f"{did_you_mean(unknown[0], allowed)}; {cls_name} takes: "
                         f"{', '.join(allowed)}")
    model = cls(**params)
    try:
        model._validate_params()  # scikit-learn's own check of every value, before any data
    except (ValueError, TypeError) as exc:
        raise ValueError(f"predictor {name!r}: {exc}") from None
    if name in SCALED:
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        return make_pipeline(StandardScaler(), model)
    return model


def check_options(name: str, output_type: str, options: dict) -> None:
    """Validate a predictor's options when the config is loaded (see :func:`estimator`)."""
    estimator(name, output_type, options)


class Predictor:
    """A fitted estimator that answers in its head's output space."""

    def __init__(self, model: Any, output_type: str, labels: int) -> None:
        self.model = model
        self.output_type = output_type
        self.labels = labels  # category: how many labels the head has
        # the label indices of predict_proba's columns (those the training rows held)
        self.kind = output_kind(output_type)
        self.classes = None if self.kind.regression else \
            np.asarray(model.classes_, dtype=np.int64)

    def outputs(self, fused: np.ndarray) -> torch.Tensor:
        """The head-space outputs for fused vectors ``[N, D]``: a number output's normalised
        value ``[N]``, a binary output's logit ``[N]``, a category output's log-probabilities
        ``[N, C]`` (labels absent from the training rows get probability 0)."""
        x = np.asarray(fused, dtype=np.float32)
        answer = self.model.predict(x) if self.kind.regression else self.model.predict_proba(x)
        return torch.from_numpy(self.kind.predictor_answer(answer, self.classes, self.labels))

    def dumps(self) -> bytes:
        """The estimator as skops bytes."""
        import skops.io

        return skops.io.dumps(self.model)

    @classmethod
    def loads(cls, data: bytes, output_type: str, labels: int, where: str) -> Predictor:
        """A stored predictor, loaded only if every type in it is trusted.

        Raises:
            BundleError: the file holds a type outside :data:`TRUSTED`, or is not skops.
        """
        require("skops", "predictors", "loading a bundle's classic predictor")
        import zipfile

        import skops.io

        try:
            refused = sorted(stored_types(data) - TRUSTED)
            untrusted = skops.io.get_untrusted_types(data=data)
        except (zipfile.BadZipFile, KeyError, ValueError) as exc:  # not a skops archive
            raise BundleError(f"{where} is not a readable skops file ({exc}); retrain, or "
                              "restore the bundle") from None
        refused = sorted(set(refused) | (set(untrusted) - TRUSTED))
        if refused:
            raise BundleError(f"{where} holds types mmfuse does not trust ({', '.join(refused)}"
                              "); refusing to load it. Retrain, or fit the predictor again")
        try:
            model = skops.io.loads(data, trusted=untrusted)
        except Exception as exc:  # skops rebuilds arbitrary trusted objects; any may fail
            raise BundleError(f"{where} could not be loaded ({type(exc).__name__}: {exc}); "
                              "retrain, or fit the predictor again") from None
        return cls(model, output_type, labels)


def fit_predictor(spec: dict, output_type: str, labels: int, fused: np.ndarray,
                  targets: np.ndarray, seed: int) -> Predictor:
    """Fit the predictor ``spec`` ({type, ...options}) on fused training vectors.

    Raises:
        DataError: the training rows hold a single class (nothing to tell apart).
    """
    rows, y = output_kind(output_type).predictor_targets(targets)
    if not output_kind(output_type).regression and len(np.unique(y)) < 2:
        raise DataError(f"predictor {spec['type']!r}: the training rows hold one class only; "
                        "a classifier needs two")
    model = estimator(spec["type"], output_type, {k: v for k, v in spec.items() if k != "type"},
                      seed)
    model.fit(np.asarray(fused[rows], dtype=np.float32), y)
    return Predictor(model, output_type, labels)


def to_onnx(predictor: Predictor, width: int, opset: int) -> bytes:
    """The predictor converted by skl2onnx: input ``fused`` ``[N, width]`` float32, output
    ``values`` ``[N, 1]`` (number) or ``probabilities`` ``[N, classes]``."""
    require("skl2onnx", "export", "exporting a classic predictor to ONNX")
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    model = predictor.model
    final = model.steps[-1][1] if hasattr(model, "steps") else model
    options = None if predictor.kind.regression else {id(final): {"zipmap": False}}
    with _integer_missing_flags():
        onx = convert_sklearn(model, initial_types=[("fused", FloatTensorType([None, width]))],
                              options=options, target_opset={"": opset, "ai.onnx.ml": 3})
    return onx.SerializeToString()


@contextmanager
def _integer_missing_flags() -> Iterator[None]:
    """skl2onnx 1.20's histogram-gradient-boosting converter gives leaves the Python bool
    ``False`` as ``nodes_missing_value_tracks_true``, which onnx >= 1.20 refuses in an ints
    attribute ("Expected an int, got a boolean"); while converting, every flag is an int."""
    import skl2onnx.common.tree_ensemble as trees

    original = trees.add_node

    def add_node(*args: Any, nodes_missing_value_tracks_true: Any = 0, **kwargs: Any) -> Any:
        return original(*args, nodes_missing_value_tracks_true=int(
            nodes_missing_value_tracks_true), **kwargs)

    trees.add_node = add_node
    try:
        yield
    finally:
        trees.add_node = original
