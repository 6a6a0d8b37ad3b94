"""Stages: each a small class (``prismatic.stages.<name>``) that reads tables, calls one module's logic, MERGEs
its output and reports counts; the registry lists them in pipeline order. See :mod:`prismatic.stages.base`.

The functions other code needs live in the stage modules and take a :class:`Context`: ``score.score_pool``,
``embed.embed_pool``, ``dedup.dedup_pool``, ``diversity.measure_diversity``, ``cluster.cluster_task`` /
``cluster_tasks``; the typed pool filter and the user's ``--where`` channel are in ``stages.common``.
"""

from prismatic.stages.base import Context, Option, Report, Stage

__all__ = ["Context", "Option", "Report", "Stage"]
