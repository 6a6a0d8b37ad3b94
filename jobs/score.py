"""Bundle task Score: projected per-sample gradients of the pool -> `gradients` (CUDA on a GPU cluster).

Parameters: the base ones (see _common.py) plus the options of `prism score`:
  --where SQL   filter on the pool (e.g. "source = 'snli'")
  --limit N     score at most N samples
"""

from _common import run_stage

if __name__ == "__main__":
    run_stage("score")
