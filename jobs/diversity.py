"""Bundle task Diversity: G-Vendi and baselines of the scored pool, overall and per group -> `diversity`.

Parameters: the base ones (see _common.py) plus
  --group-by COLS   comma list of source, task, round, origin, cluster
  --exact           also the exact (d = inf) G-Vendi (small pools only)
"""

from _common import main, parser, settings_from, store_for
from prismatic.stages import diversity_stage


def build_parser():
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--group-by", default="")
    p.add_argument("--exact", action="store_true")
    return p


def run() -> None:
    args = build_parser().parse_args()
    settings = settings_from(args)
    rows = diversity_stage(store_for(settings), settings, args.group_by.split(","), exact=args.exact)
    print(rows.to_string(index=False))


if __name__ == "__main__":
    main(run)
