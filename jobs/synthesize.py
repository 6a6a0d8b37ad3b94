"""Bundle task Synthesize: Prismatic Synthesis rounds (generate, verify, sparse-cluster filter, merge).

Parameters: the base ones (see _common.py) plus the options of `prism synthesize`:
  --rounds N              rounds to have done (default synth.rounds)
  --target-pool-size N    stop when the pool has this many samples
  --token-budget N        stop after this many generated tokens
"""

from _common import run_stage

if __name__ == "__main__":
    run_stage("synthesize")
