"""Stage diversity: G-Vendi of the scored pool (overall and per group) plus baselines -> ``diversity``.

Rows are keyed by (scope, group_key, metric, spec_id, samples_version): the same pool version gives the same rows,
so re-running changes nothing; a grown pool adds rows under its new version.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyarrow as pa

from prismatic.errors import PrismError
from prismatic.stages.base import Context, Option, Stage
from prismatic.stages.common import now
from prismatic.tables import TableStore

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    import pandas as pd

GROUPABLE = ("source", "task", "round", "origin", "cluster")
# The one default grouping: `prism diversity`, `prism run` and the bundle's Diversity task write scope
# "source,round" (group_key "<source>/<round>"), which notebooks/01, sql/pool_by_source_round.sql and the bundle read.
DEFAULT_GROUP_BY = "source,round"
EXACT_MAX_N = 500
COLUMNS = ["scope", "group_key", "metric", "value", "n", "spec_id"]


@dataclass
class DiversityReport:
    """The rows written (a pandas DataFrame with :data:`COLUMNS`)."""

    frame: pd.DataFrame

    def summary(self) -> str:
        g = self.frame[self.frame["metric"] == "g_vendi"]
        return ", ".join(f"{r.group_key}: G-Vendi {r.value:.2f} (n={r.n})" for r in g.itertuples())

    def rows(self) -> list[dict]:
        return self.frame.to_dict("records")


def _pool_with_vectors(store: TableStore, spec_id: str, group_by: list[str]):
    from pyspark.sql import functions as F

    pool = store.pool().select("sample_id", "source", "task", "round", "origin", "prompt", "completion")
    grads = store.read("gradients").where(F.col("spec_id") == spec_id).select("sample_id", "spec_id", "vector")
    df = pool.join(grads, "sample_id")
    if "cluster" in group_by:
        asg = store.read("assignments")
        last = asg.agg(F.max("round")).collect()[0][0]
        if last is None:
            raise PrismError("--group-by cluster needs clusters", hint="run `prism cluster` first")
        # cluster ids are per (round, task): the group names both
        asg = asg.where(F.col("round") == last).select(
            "sample_id", F.concat_ws(":", "task", F.col("cluster_id").cast("string")).alias("cluster")
        )
        df = df.join(asg, "sample_id")
    return df.withColumn("text", F.concat_ws("\n", "prompt", "completion"))


def measure_diversity(
    ctx: Context,
    group_by: list[str] | None = None,
    exact: bool = False,
    baselines: bool = True,
    embedding: bool = True,
) -> DiversityReport:
    """G-Vendi (and baselines) of the pool scored under ``ctx.spec()``, overall and per group -> ``diversity``.

    Args:
        group_by: columns of :data:`GROUPABLE`; each group gets its rows besides the overall ones.
        exact: also the exact (d = inf) G-Vendi (:func:`exact_diversity`).
        baselines: n-gram entropy, distinct-n and (with ``embedding``) the embedding Vendi.
    """
    import pandas as pd

    from prismatic.diversity import diversity_report

    group_by = [g.strip() for g in (group_by or []) if g.strip()]
    bad = [g for g in group_by if g not in GROUPABLE]
    if bad:
        raise PrismError(f"--group-by {bad} not allowed; choose from {', '.join(GROUPABLE)}")
    store, settings = ctx.store, ctx.settings
    spec = ctx.spec()
    df = _pool_with_vectors(store, spec.spec_id, group_by).localCheckpoint()
    if df.count() == 0:
        raise PrismError(f"no scored samples under spec {spec.spec_id}", hint="run `prism score` first")
    frames = [
        gvendi_from_stored_sums(store, df, cols, settings.diversity)
        for cols in [None] + ([group_by] if group_by else [])
    ]
    if baselines:
        frames += [
            diversity_report(
                df, settings.diversity, cols, vector_col=None, text_col="text", spec_col="spec_id", embedding=embedding
            )
            for cols in [None] + ([group_by] if group_by else [])
        ]
    rows = pd.concat(frames, ignore_index=True)
    if exact:
        rows = pd.concat([rows, exact_diversity(df, settings.scoring, spec)], ignore_index=True)
    version = store.version("samples")
    out = rows.rename(columns={"group": "group_key"}).assign(samples_version=version, created_at=now())
    out["spec_id"] = out["spec_id"].fillna("")
    store.merge("diversity", pa.Table.from_pandas(out, preserve_index=False))
    return DiversityReport(out[COLUMNS])


def _stored_sums(store: TableStore, scope: str, spec_id: str) -> dict:
    """Latest ``diversity_sums`` row per group of this scope and spec, as :class:`StoredSums` by group key."""
    import pyarrow.compute as pc

    from prismatic.diversity import StoredSums

    if not store.exists("diversity_sums"):
        return {}
    t = store.read_arrow("diversity_sums")
    t = t.filter(pc.and_(pc.equal(t["scope"], scope), pc.equal(t["spec_id"], spec_id)))
    latest: dict[str, dict] = {}
    for r in t.to_pylist():  # newest first, then the larger set
        old = latest.get(r["group_key"])
        if old is None or (r["created_at"], r["n"]) > (old["created_at"], old["n"]):
            latest[r["group_key"]] = r
    return {g: StoredSums.from_row(r) for g, r in latest.items()}


def gvendi_from_stored_sums(store: TableStore, df, cols: list[str] | None, cfg) -> pd.DataFrame:
    """G-Vendi rows of one grouping from the stored per-group sums plus the rows they do not cover (new rounds),
    then the new sums stored (``diversity_sums``); see :func:`prismatic.diversity.incremental_gradient_diversity`."""
    from prismatic.diversity import incremental_gradient_diversity, scope_name

    spec_id = df.select("spec_id").first()["spec_id"]
    stored = _stored_sums(store, scope_name(cols or []), spec_id)
    inc = incremental_gradient_diversity(df, stored, cols, q=cfg.q, fanout=cfg.tree_fanout)
    log.info("G-Vendi sums %s: %s; %d vectors summed", scope_name(cols or []), inc.plan, inc.rows_summed)
    if inc.records:
        created = now()
        rows = [dict(r.to_row(), created_at=created) for r in inc.records.values()]
        store.merge("diversity_sums", pa.Table.from_pylist(rows))
    return inc.result.rows


def exact_diversity(df, scoring_cfg, spec) -> pd.DataFrame:
    """Exact G-Vendi (d = inf: the N x N kernel of full per-sample gradients) for calibrating on small sets; one
    row as a pandas DataFrame."""
    import pandas as pd

    from prismatic.gradients.exact import exact_gvendi
    from prismatic.gradients.udf import get_scorer

    rows = df.select("sample_id", "prompt", "completion").orderBy("sample_id").limit(EXACT_MAX_N + 1).collect()
    if len(rows) > EXACT_MAX_N:
        raise PrismError(
            f"--exact is for small sets (at most {EXACT_MAX_N} scored samples)",
            hint="pass --where / use a smaller pool to calibrate",
        )
    scorer = get_scorer(scoring_cfg)
    encoded = [scorer.encode(r["prompt"], r["completion"]) for r in rows]
    encoded = [e for e in encoded if not e.error]
    res = exact_gvendi(scorer.loaded.model, encoded, scoring_cfg.params)
    return pd.DataFrame(
        [
            {
                "scope": "all",
                "group": "all",
                "metric": "g_vendi_exact",
                "value": res.gvendi,
                "n": len(encoded),
                "spec_id": f"exact:{spec.weights_sha256[:16]}",
            }
        ]
    )


class DiversityStage(Stage):
    name = "diversity"
    help = "G-Vendi of the scored pool (overall and per group) plus baselines -> `diversity`."
    section = "diversity"
    reads = ("samples", "duplicates", "gradients", "assignments")
    writes = ("diversity", "diversity_sums")
    options = (
        Option(
            "group_by",
            default=DEFAULT_GROUP_BY,
            help="comma list of source, task, round, origin, cluster ('' = overall only)",
        ),
        Option("exact", kind=bool, default=False, help="also the exact (d = inf) G-Vendi; small pools only"),
        Option(
            "baselines", kind=bool, default=True, negatable=True, help="embedding Vendi, n-gram entropy, distinct-n"
        ),
    )

    def run(self, ctx: Context, *, group_by, exact, baselines) -> DiversityReport:
        return measure_diversity(ctx, (group_by or "").split(","), exact=exact, baselines=baselines)

    def pipeline_calls(self, settings):
        return [{"group_by": DEFAULT_GROUP_BY}]
