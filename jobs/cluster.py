"""Bundle task Cluster: spherical k-means of each task's pool gradients (synth.tasks) -> `clusters`, `assignments`.

Parameters: the base ones (see _common.py) plus
  --round N   round to cluster for (default: the next synthesis round, so a scheduled job moves forward)
"""

from _common import main, parser, settings_from, store_for
from prismatic.stages import cluster_tasks


def build_parser():
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--round", type=int, default=None)
    return p


def run() -> None:
    args = build_parser().parse_args()
    settings = settings_from(args)
    for report in cluster_tasks(store_for(settings), settings, round=args.round):
        print(report.summary())


if __name__ == "__main__":
    main(run)
