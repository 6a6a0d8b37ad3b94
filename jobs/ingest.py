"""Bundle task Ingest: read candidate files into candidates_bronze / samples / quarantine (all files or none).

Parameters: the base ones (see _common.py) plus the options of `prism ingest`:
  --paths PATH     file, folder or glob (repeatable; e.g. /Volumes/<catalog>/<schema>/raw/*.jsonl)
  --source NAME    data source name (required)
  --task TASK      math | nli | generic
  --limit N        read at most N rows of each file
"""

from _common import run_stage

if __name__ == "__main__":
    run_stage("ingest")
