"""Bundle task Dedup: exact and near-duplicate removal over the pool (records in `duplicates`).

Parameters: the base ones (see _common.py); the stage has no options of its own.
"""

from _common import run_stage

if __name__ == "__main__":
    run_stage("dedup")
