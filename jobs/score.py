"""Bundle task Score: projected per-sample gradients of the pool -> `gradients` (CUDA on a GPU cluster).

Parameters: the base ones (see _common.py) plus
  --where SQL   filter on the pool (e.g. "source = 'snli'")
  --limit N     score at most N samples
"""

from _common import main, parser, settings_from, store_for
from prismatic.stages import score_stage


def build_parser():
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--where", default=None)
    p.add_argument("--limit", type=int, default=None)
    return p


def run() -> None:
    args = build_parser().parse_args()
    settings = settings_from(args)
    print(score_stage(store_for(settings), settings, where=args.where, limit=args.limit).summary())


if __name__ == "__main__":
    main(run)
