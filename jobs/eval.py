"""Bundle task Eval: accuracy of the latest trained student (or --model) ID and OOD -> `eval_results`.

Parameters: the base ones (see _common.py) plus the options of `prism eval`:
  --model DIR|URI    student folder or registered model (models:/NAME@champion, models:/NAME/VERSION, runs:/ID/model)
                     (default: the latest trained under the data root, i.e. the Train task's)
  --benchmark NAMES  built-in benchmark names or JSONL files, repeatable or a comma list (default train.benchmarks)
  --method METHOD    lm student: loglik | generate (default train.eval_method)
  --method M         lm student: loglik | generate (default train.eval_method)
"""

from _common import run_stage

if __name__ == "__main__":
    run_stage("eval")
