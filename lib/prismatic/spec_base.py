"""What every vector-space spec (projection or embedding) shares: canonical JSON, ``spec_id``, its table row.

Kept free of torch so that light modules (embeddings, stages) can use it without loading the scorer.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, fields
from typing import Any

from prismatic.errors import SpecMismatchError


class HashedSpec:
    """Mixin for frozen dataclasses whose fields, hashed, name a vector space (see ``projection_specs``)."""

    def canonical_json(self) -> str:
        """Sorted keys, no whitespace, ASCII: the exact text ``spec_id`` hashes."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"), ensure_ascii=True)

    @property
    def spec_id(self) -> str:
        """The first 16 hex characters of the sha256 of :meth:`canonical_json`."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()[:16]

    def to_row(self) -> dict[str, Any]:
        """One row of ``projection_specs`` (less ``created_at``): the hashed JSON holds every field; ``seed`` is
        null for a spec without one (an encoder)."""
        return {
            "spec_id": self.spec_id,
            "spec_json": self.canonical_json(),
            "model_id": self.model_id,
            "weights_sha256": self.weights_sha256,
            "kind": self.kind,
            "d": self.d,
            "seed": getattr(self, "seed", None),
        }

    @classmethod
    def from_row(cls, row: dict):
        """Rebuild a spec from a ``projection_specs`` row (its ``spec_json``) and check its ``spec_id``."""
        data = json.loads(row["spec_json"])
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"spec_json has unknown fields {sorted(unknown)}")
        spec = cls(**data)
        if "spec_id" in row and row["spec_id"] != spec.spec_id:
            raise SpecMismatchError(f"row spec_id {row['spec_id']} does not match its fields (hash {spec.spec_id})")
        return spec
