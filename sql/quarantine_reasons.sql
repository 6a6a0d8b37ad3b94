-- Quarantine: rows a stage could not use, by stage, source and reason code, with an example of each.
--
-- Table: quarantine (stage, source, file, line, item_id, reason, detail, payload). Ingest reasons: invalid_json,
-- not_utf8, wrong_type, missing_field, empty_text, too_long, bad_label, bad_messages, bad_csv_row; scoring adds
-- empty_completion, nonfinite_loss, nonfinite_gradient, zero_gradient, oom, error:<type>.
-- Locally:     prism sql -f sql/quarantine_reasons.sql
-- Databricks:  USE CATALOG <catalog_name>; USE SCHEMA <schema_name>; then run this file in a SQL warehouse.

SELECT
  stage,
  source,
  reason,
  count(*) AS n_rows,
  count(DISTINCT file) AS files,
  min_by(concat(coalesce(file, item_id, ''), ':', coalesce(cast(line AS STRING), '')), struct(file, line, item_id))
    AS first_at,
  min_by(substr(coalesce(detail, payload), 1, 160), struct(file, line, item_id)) AS example,
  max(created_at) AS last_seen
FROM quarantine
GROUP BY stage, source, reason
ORDER BY n_rows DESC, stage, source, reason;
