"""Bundle task Study: K equal-size subsets of controlled diversity -> students -> Spearman rho of every
diversity metric against OOD accuracy -> `study` and MLflow.

Parameters: the base ones (see _common.py) plus the options of `prism study`:
  --subsets K       number of subsets (default study.subsets)
  --student KIND    probe | lm (default study.student)
  --force           recompute a study already recorded
"""

from _common import run_stage

if __name__ == "__main__":
    run_stage("study")
