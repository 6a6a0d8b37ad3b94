-- Contamination hits: synthetic candidates rejected because they share a word n-gram (10 by default) with an
-- evaluation set (reason 'contaminated'; `detail` names the eval set and the shared n-gram).
--
-- Table: synth_candidates.
-- Locally:     prism sql -f sql/contamination_hits.sql
-- Databricks:  USE CATALOG <catalog_name>; USE SCHEMA <schema_name>; then run this file in a SQL warehouse.

-- Per round: hits and their share of the round's candidates.
SELECT
  round,
  sum(CASE WHEN reason = 'contaminated' THEN 1 ELSE 0 END) AS hits,
  count(*) AS candidates,
  round(avg(CASE WHEN reason = 'contaminated' THEN 1.0 ELSE 0.0 END), 4) AS hit_rate
FROM synth_candidates
GROUP BY round
ORDER BY round;

-- Every hit with what it matched.
SELECT
  round,
  candidate_id,
  generator,
  detail AS matched,
  substr(prompt, 1, 200) AS prompt
FROM synth_candidates
WHERE reason = 'contaminated'
ORDER BY round, candidate_id;
