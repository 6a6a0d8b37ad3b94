"""Bundle task Ingest: read candidate files into candidates_bronze / samples / quarantine.

Parameters: the base ones (see _common.py) plus
  --input PATH     file, folder or glob (repeatable; e.g. /Volumes/<catalog>/<schema>/raw/*.jsonl)
  --source NAME    data source name
  --task TASK      math | nli | generic
  --limit N        read at most N rows of each file
"""

from _common import main, parser, settings_from, store_for
from prismatic.ingest import ingest


def build_parser():
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--input", dest="inputs", action="append", required=True)
    p.add_argument("--source", required=True)
    p.add_argument("--task", default="generic", choices=["math", "nli", "generic"])
    p.add_argument("--limit", type=int, default=None)
    return p


def run() -> None:
    args = build_parser().parse_args()
    settings = settings_from(args)
    report = ingest(store_for(settings), args.inputs, args.source, args.task, settings, limit=args.limit)
    for note in report.notes():  # skipped files, empty / decoded / changed files, payloads cut
        print(note)
    print(report.summary())


if __name__ == "__main__":
    main(run)
