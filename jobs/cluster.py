"""Bundle task Cluster: spherical k-means of each task's pool vectors (synth.tasks) -> `clusters`, `assignments`.

Parameters: the base ones (see _common.py) plus the options of `prism cluster`:
  --round N    round to cluster for (default: the next synthesis round, so a scheduled job moves forward)
  --task TASK  task(s) to cluster, repeatable or a comma list (default synth.tasks)
"""

from _common import run_stage

if __name__ == "__main__":
    run_stage("cluster")
