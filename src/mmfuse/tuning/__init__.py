"""``mmfuse tune``: hyperparameter search over a config's ``tune:`` section, on Optuna.

- ``space.py``: the ``tune:`` config models, dotted-path checks and applying a trial's values;
- ``study.py``: the study (storage, resume, sampler, pruner, workers) and one trial's run;
- ``outputs.py``: ``trials.csv``, ``best.yaml``, ``best/``, the live table and the summary.

``run_tune`` loads lazily: config.py imports ``space`` while the study needs torch and Optuna.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["run_tune"]

if TYPE_CHECKING:
    from .study import run_tune


def __getattr__(name: str) -> Any:
    if name == "run_tune":
        from .study import run_tune

        return run_tune
    raise AttributeError(f"module 'mmfuse.tuning' has no attribute {name!r}")
