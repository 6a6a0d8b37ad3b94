"""Bundle task Dedup: exact and near-duplicate removal over the pool (records in `duplicates`).

Parameters: the base ones (see _common.py).
"""

from _common import main, parser, settings_from, store_for
from prismatic.stages import dedup_stage


def build_parser():
    return parser(__doc__.splitlines()[0])


def run() -> None:
    args = build_parser().parse_args()
    settings = settings_from(args)
    print(dedup_stage(store_for(settings), settings).summary())


if __name__ == "__main__":
    main(run)
