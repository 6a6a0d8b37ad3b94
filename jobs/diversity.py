"""Bundle task Diversity: G-Vendi and baselines of the scored pool, overall and per group -> `diversity`.

Parameters: the base ones (see _common.py) plus the options of `prism diversity`:
  --group-by COLS              comma list of source, task, round, origin, cluster (default: source,round)
  --exact                      also the exact (d = inf) G-Vendi (small pools only)
  --baselines / --no-baselines embedding Vendi, n-gram entropy, distinct-n (default: on)
"""

from _common import run_stage

if __name__ == "__main__":
    run_stage("diversity")
