-- Diversity-vs-OOD study: how well each diversity metric of a training subset predicts the student's OOD accuracy.
--
-- Table: study (study_id, subset_id, metric, value): per subset one row per diversity metric (g_vendi,
-- emb_vendi, ngram_entropy_2, distinct_2, ...) and its accuracies (metric names ending in '_accuracy';
-- 'ood_accuracy' is the target). Spearman rho = Pearson correlation of the ranks (ties get their average rank).
-- Locally:     prism sql -f sql/study_correlations.sql
-- Databricks:  USE CATALOG <catalog_name>; USE SCHEMA <schema_name>; then run this file in a SQL warehouse.

WITH ood AS (
  SELECT study_id, subset_id, value AS ood_accuracy
  FROM study
  WHERE metric = 'ood_accuracy'
),
pairs AS (
  SELECT m.study_id, m.subset_id, m.metric, m.value, o.ood_accuracy
  FROM study m
  JOIN ood o ON o.study_id = m.study_id AND o.subset_id = m.subset_id
  WHERE m.metric NOT LIKE '%accuracy' AND m.value IS NOT NULL AND o.ood_accuracy IS NOT NULL
),
varied AS (  -- a constant column (a design value such as the subset size) has no correlation: leave it out
  SELECT study_id, metric
  FROM pairs
  GROUP BY study_id, metric
  HAVING min(value) < max(value) AND min(ood_accuracy) < max(ood_accuracy)
),
ranked AS (
  SELECT
    study_id,
    metric,
    value,
    ood_accuracy,
    rank() OVER (PARTITION BY study_id, metric ORDER BY value)
      + (count(*) OVER (PARTITION BY study_id, metric, value) - 1) / 2.0 AS value_rank,
    rank() OVER (PARTITION BY study_id, metric ORDER BY ood_accuracy)
      + (count(*) OVER (PARTITION BY study_id, metric, ood_accuracy) - 1) / 2.0 AS ood_rank
  FROM pairs JOIN varied USING (study_id, metric)
)
SELECT
  study_id,
  metric,
  count(*) AS subsets,
  round(corr(value_rank, ood_rank), 4) AS spearman_rho,
  round(corr(value, ood_accuracy), 4) AS pearson_r,
  round(min(value), 4) AS min_value,
  round(max(value), 4) AS max_value
FROM ranked
GROUP BY study_id, metric
ORDER BY study_id, spearman_rho DESC NULLS LAST, metric;
