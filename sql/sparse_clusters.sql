-- The sparsest clusters of the latest clustering round, with example samples.
--
-- Tables: clusters (round, task, cluster_id, size, sparse), assignments (round, task, sample_id, cluster_id,
-- cosine), samples. Each task is clustered on its own, so cluster ids are per (round, task).
-- Sparse clusters (size below the configured quantile, `sparse` = true) are where synthesis draws its few-shot
-- exemplars. Examples are the three members closest to the centroid (highest cosine).
-- Locally:     prism sql -f sql/sparse_clusters.sql
-- Databricks:  USE CATALOG <catalog_name>; USE SCHEMA <schema_name>; then run this file in a SQL warehouse.

WITH latest AS (
  SELECT max(round) AS round FROM clusters
),
sparsest AS (
  SELECT c.round, c.task, c.cluster_id, c.size, c.sparse
  FROM clusters c
  JOIN latest l ON c.round = l.round
  ORDER BY c.size, c.task, c.cluster_id
  LIMIT 20
),
examples AS (
  SELECT
    a.round,
    a.task,
    a.cluster_id,
    a.cosine,
    s.sample_id,
    s.source,
    s.origin,
    s.prompt,
    row_number() OVER (PARTITION BY a.round, a.task, a.cluster_id ORDER BY a.cosine DESC, a.sample_id) AS rk
  FROM assignments a
  JOIN sparsest c ON a.round = c.round AND a.task = c.task AND a.cluster_id = c.cluster_id
  JOIN samples s ON s.sample_id = a.sample_id
)
SELECT
  c.round,
  c.task,
  c.cluster_id,
  c.size,
  c.sparse,
  e.rk AS example,
  round(e.cosine, 4) AS cosine,
  e.source,
  e.origin,
  substr(e.prompt, 1, 200) AS prompt
FROM sparsest c
LEFT JOIN examples e ON e.round = c.round AND e.task = c.task AND e.cluster_id = c.cluster_id AND e.rk <= 3
ORDER BY c.size, c.task, c.cluster_id, e.rk;
