"""Bundle task Dedup: exact and near-duplicate removal over the pool (records in `duplicates`).

Parameters: the base ones (see _common.py).
"""

from _common import main, parser, settings_from, store_for

from prismatic.dedup import run_dedup


def run() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    settings = settings_from(args)
    print(run_dedup(store_for(settings), settings).summary())


if __name__ == "__main__":
    main(run)
