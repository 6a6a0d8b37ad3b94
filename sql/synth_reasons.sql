-- Synthesis: acceptance rate and rejection reasons per round.
--
-- Table: synth_candidates (one row per generated candidate with status and reason; reasons include
-- no_consensus, unparseable, dense_cluster, duplicate, contaminated, too_long, generator_error, accepted).
-- Locally:     prism sql -f sql/synth_reasons.sql
-- Databricks:  USE CATALOG <catalog_name>; USE SCHEMA <schema_name>; then run this file in a SQL warehouse.

-- Per round: candidates, accepted, acceptance rate, generated tokens.
SELECT
  round,
  count(*) AS candidates,
  sum(CASE WHEN status = 'accepted' THEN 1 ELSE 0 END) AS accepted,
  round(avg(CASE WHEN status = 'accepted' THEN 1.0 ELSE 0.0 END), 4) AS acceptance_rate,
  sum(tokens) AS tokens
FROM synth_candidates
GROUP BY round
ORDER BY round;

-- Per round and reason: how many candidates and which share of the round.
SELECT
  round,
  status,
  coalesce(reason, status) AS reason,
  count(*) AS candidates,
  round(count(*) / sum(count(*)) OVER (PARTITION BY round), 4) AS share_of_round
FROM synth_candidates
GROUP BY round, status, coalesce(reason, status)
ORDER BY round, candidates DESC, reason;
