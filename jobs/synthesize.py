"""Bundle task Synthesize: Prismatic Synthesis rounds (generate, verify, sparse-cluster filter, merge).

Parameters: the base ones (see _common.py) plus
  --rounds N              rounds to have done (default synth.rounds)
  --target-pool-size N    stop when the pool has this many samples
  --token-budget N        stop after this many generated tokens
"""

from _common import main, parser, settings_from, store_for
from prismatic.synth.loop import synthesize


def build_parser():
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--target-pool-size", type=int, default=None)
    p.add_argument("--token-budget", type=int, default=None)
    return p


def run() -> None:
    args = build_parser().parse_args()
    settings = settings_from(args)
    for r in synthesize(
        store_for(settings),
        settings,
        rounds=args.rounds,
        target_pool_size=args.target_pool_size,
        token_budget=args.token_budget,
    ):
        print(r.summary())


if __name__ == "__main__":
    main(run)
