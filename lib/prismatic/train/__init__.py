"""Students, evaluation and the diversity-vs-OOD study.

Stage functions (what the CLI and jobs call):

* :func:`train_stage` (``prismatic.train.students``): train a ``probe`` or ``lm`` student on a pool subset.
* :func:`eval_stage` (``prismatic.train.evaluate``): accuracy of a student on benchmarks → ``eval_results``.
* :func:`train_and_evaluate` (``prismatic.train.evaluate``): both, for the end of a synthesis round.
* :func:`study_stage` (``prismatic.train.study``): K subsets of controlled diversity → students → Spearman ρ of
  every diversity metric against OOD accuracy → ``study`` + MLflow.

Submodules import torch, transformers and scikit-learn lazily; importing this package is cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prismatic.train.evaluate import eval_stage, train_and_evaluate
    from prismatic.train.students import TrainReport, train_stage
    from prismatic.train.study import StudyReport, study_stage

__all__ = ["StudyReport", "TrainReport", "eval_stage", "study_stage", "train_and_evaluate", "train_stage"]

_WHERE = {
    "train_stage": "prismatic.train.students",
    "TrainReport": "prismatic.train.students",
    "eval_stage": "prismatic.train.evaluate",
    "train_and_evaluate": "prismatic.train.evaluate",
    "study_stage": "prismatic.train.study",
    "StudyReport": "prismatic.train.study",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'prismatic.train' has no attribute {name!r}")
