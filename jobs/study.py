"""Bundle task Study: K equal-size subsets of controlled diversity -> students -> Spearman rho of every
diversity metric against OOD accuracy -> `study` and MLflow.

Parameters: the base ones (see _common.py) plus
  --subsets K       number of subsets (default study.subsets)
  --student KIND    probe | lm (default study.student)
"""

from _common import main, parser, settings_from, store_for
from prismatic.train import study_stage


def build_parser():
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--subsets", type=int, default=None)
    p.add_argument("--student", choices=["lm", "probe"], default=None)
    return p


def run() -> None:
    args = build_parser().parse_args()
    settings = settings_from(args)
    print(study_stage(store_for(settings), settings, subsets=args.subsets, student=args.student).summary())


if __name__ == "__main__":
    main(run)
