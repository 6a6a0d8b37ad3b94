-- Pool size and latest G-Vendi by source and round.
--
-- Tables: samples, duplicates (the pool = samples minus duplicates), diversity.
-- Locally:     prism sql -f sql/pool_by_source_round.sql        (every table is a view under its short name)
-- Databricks:  run in a SQL warehouse or notebook after
--                USE CATALOG <catalog_name>; USE SCHEMA <schema_name>;
--              (the bundle's catalog_name / schema_name variables; the jobs write the tables there).
--
-- G-Vendi comes from the Diversity task's rows with scope 'source,round' (group_key '<source>/<round>', metric
-- 'g_vendi'); "latest" = the row measured on the highest `samples` table version. Groups that were not scored yet
-- show NULL. The pool is defined inline (not the local `pool` view) so the file runs unchanged on a warehouse.

WITH pool AS (
  SELECT s.*
  FROM samples s
  LEFT ANTI JOIN duplicates d ON s.sample_id = d.sample_id
),
sizes AS (
  SELECT
    source,
    round,
    count(*) AS pool_size,
    sum(CASE WHEN origin = 'synthetic' THEN 1 ELSE 0 END) AS synthetic,
    concat_ws(',', sort_array(collect_set(task))) AS tasks
  FROM pool
  GROUP BY source, round
),
gvendi AS (
  SELECT
    group_key,
    max_by(value, struct(samples_version, created_at)) AS g_vendi,
    max_by(n, struct(samples_version, created_at)) AS n_scored,
    max_by(spec_id, struct(samples_version, created_at)) AS spec_id,
    max(samples_version) AS samples_version
  FROM diversity
  WHERE scope = 'source,round' AND metric = 'g_vendi'
  GROUP BY group_key
)
SELECT
  z.source,
  z.round,
  z.tasks,
  z.pool_size,
  z.synthetic,
  round(g.g_vendi, 4) AS g_vendi,
  g.n_scored,
  g.samples_version,
  g.spec_id
FROM sizes z
LEFT JOIN gvendi g
  ON g.group_key = concat(coalesce(z.source, 'null'), '/', coalesce(cast(z.round AS STRING), 'null'))
ORDER BY z.source, z.round;

-- The whole pool's G-Vendi as the pool grew (scope 'all'), one row per samples table version and spec.
SELECT samples_version, spec_id, round(value, 4) AS g_vendi, n
FROM diversity
WHERE scope = 'all' AND metric = 'g_vendi'
ORDER BY samples_version, spec_id;
