"""Bundle task Train: a student on the grown pool (lm: fine-tuned causal LM; probe: classifier on frozen features).

Parameters: the base ones (see _common.py) plus the options of `prism train`:
  --student KIND   lm | probe (default train.student)
"""

from _common import run_stage

if __name__ == "__main__":
    run_stage("train")
