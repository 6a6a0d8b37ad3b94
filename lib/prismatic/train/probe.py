"""The ``probe`` student: logistic regression on frozen sentence-pair features, for large NLI studies.

Features of a (premise, hypothesis) pair are [u, v, |u − v|, u ⊙ v] of the unit MiniLM embeddings u, v of the
two sentences (the InferSent recipe, Conneau et al. 2017, https://arxiv.org/abs/1705.02364). The classifier is
scikit-learn's ``LogisticRegression`` (multinomial, L2, lbfgs). Training 500 pairs takes well under a second;
embedding them is the cost, and :class:`prismatic.train.data.EmbeddingCache` pays it once per text.

Checkpoint (no pickle): ``probe.safetensors`` holds ``coef`` (classes × features, float64) and ``intercept``
(classes,); ``probe.json`` holds the class labels, the encoder and the feature recipe. A binary fit is stored
in the same two-row form (row 0 zero), and a training set with a single label gives a constant classifier.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prismatic.train.data import pair_features

FEATURES = "minilm-pair:[u,v,|u-v|,u*v]"
WEIGHTS_FILE = "probe.safetensors"
META_FILE = "probe.json"


@dataclass
class ProbeStudent:
    """A linear classifier over pair features: ``argmax(coef @ x + intercept)`` → ``labels``.

    Attributes:
        coef: (classes, features) float64.
        intercept: (classes,) float64.
        labels: class names, aligned with the rows of ``coef``.
        embedding_model: the sentence encoder whose embeddings the features are built from.
        features: feature recipe name (checked on load).
        train_accuracy: accuracy on its own training pairs (a sanity figure).
    """

    coef: np.ndarray
    intercept: np.ndarray
    labels: list[str]
    embedding_model: str = "builtin:minilm"
    features: str = FEATURES
    train_accuracy: float | None = None

    kind = "probe"

    def __post_init__(self) -> None:
        self.coef = np.asarray(self.coef, dtype=np.float64)
        self.intercept = np.asarray(self.intercept, dtype=np.float64)
        if self.coef.ndim != 2 or self.intercept.shape != (self.coef.shape[0],):
            raise ValueError(
                f"coef must be (classes, features) and intercept (classes,): {self.coef.shape}, {self.intercept.shape}"
            )
        if len(self.labels) != self.coef.shape[0]:
            raise ValueError(f"{len(self.labels)} labels for {self.coef.shape[0]} classifier rows")

    @classmethod
    def fit(
        cls, u: np.ndarray, v: np.ndarray, labels: Sequence[str], c: float = 1.0, max_iter: int = 2000,
        embedding_model: str = "builtin:minilm",
    ) -> ProbeStudent:  # fmt: skip
        """Fit on premise embeddings ``u``, hypothesis embeddings ``v`` (rows aligned) and their labels.

        Raises:
            ValueError: no rows, or rows and labels of different lengths.
        """
        from sklearn.linear_model import LogisticRegression

        X = pair_features(u, v)
        y = np.asarray(list(labels), dtype=object)
        if X.shape[0] == 0:
            raise ValueError("cannot fit a probe on zero examples")
        if X.shape[0] != y.shape[0]:
            raise ValueError(f"{X.shape[0]} feature rows but {y.shape[0]} labels")
        classes = sorted(set(y.tolist()))
        if len(classes) == 1:  # a constant classifier: what any learner does with one label
            return cls(np.zeros((1, X.shape[1])), np.zeros(1), classes, embedding_model, train_accuracy=1.0)
        clf = LogisticRegression(C=c, max_iter=max_iter, solver="lbfgs")
        clf.fit(X, y)
        coef, intercept = clf.coef_, clf.intercept_
        if coef.shape[0] == 1:  # binary: P(class 1) = σ(w·x + b) ⇔ argmax over rows [0, w·x + b]
            coef = np.vstack([np.zeros_like(coef), coef])
            intercept = np.array([0.0, float(intercept[0])])
        probe = cls(coef, intercept, [str(x) for x in clf.classes_], embedding_model)
        probe.train_accuracy = float(np.mean(np.asarray(probe.predict_features(X), dtype=object) == y))
        return probe

    def decision(self, X: np.ndarray) -> np.ndarray:
        """Class scores (n, classes) of feature rows."""
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.coef.shape[1]:
            raise ValueError(f"features must be (n, {self.coef.shape[1]}), got {X.shape}")
        return X @ self.coef.T + self.intercept

    def predict_features(self, X: np.ndarray) -> list[str]:
        """Predicted labels of feature rows (ties go to the first class in ``labels`` order)."""
        if len(X) == 0:
            return []
        return [self.labels[i] for i in np.argmax(self.decision(X), axis=1)]

    def predict_embeddings(self, u: np.ndarray, v: np.ndarray) -> list[str]:
        return self.predict_features(pair_features(u, v))

    def predict_nli(
        self, premises: Sequence[str], hypotheses: Sequence[str], embed: Callable[[Sequence[str]], np.ndarray]
    ) -> list[str]:
        """Predicted labels of pairs; ``embed`` maps texts to unit embeddings (the probe's encoder)."""
        if len(premises) != len(hypotheses):
            raise ValueError(f"{len(premises)} premises but {len(hypotheses)} hypotheses")
        if not premises:
            return []
        return self.predict_embeddings(embed(list(premises)), embed(list(hypotheses)))

    # ---- checkpoint ----------------------------------------------------------------------------------------

    def save(self, folder: str | Path) -> Path:
        """Write ``probe.safetensors`` + ``probe.json`` into ``folder`` (created); returns the folder."""
        from safetensors.numpy import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file(
            {"coef": np.ascontiguousarray(self.coef), "intercept": np.ascontiguousarray(self.intercept)},
            str(folder / WEIGHTS_FILE),
            metadata={"format": "prismatic-probe-1"},
        )
        meta = {
            "labels": list(self.labels),
            "embedding_model": self.embedding_model,
            "features": self.features,
            "train_accuracy": self.train_accuracy,
        }
        (folder / META_FILE).write_text(json.dumps(meta, indent=2))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> ProbeStudent:
        """Read a checkpoint written by :meth:`save`.

        Raises:
            FileNotFoundError: a file is missing. ValueError: an unknown feature recipe or inconsistent shapes.
        """
        from safetensors.numpy import load_file

        folder = Path(folder)
        for f in (WEIGHTS_FILE, META_FILE):
            if not (folder / f).is_file():
                raise FileNotFoundError(f"{folder} holds no {f}: not a probe checkpoint")
        meta = json.loads((folder / META_FILE).read_text())
        if meta.get("features") != FEATURES:
            raise ValueError(f"probe at {folder} uses features {meta.get('features')!r}; this reads {FEATURES}")
        w = load_file(str(folder / WEIGHTS_FILE))
        return cls(
            w["coef"],
            w["intercept"],
            list(meta["labels"]),
            meta.get("embedding_model", "builtin:minilm"),
            meta["features"],
            meta.get("train_accuracy"),
        )
