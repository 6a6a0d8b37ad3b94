"""Bundle task TrainEval: train a student on the grown pool, then evaluate it ID and OOD -> `eval_results`.

Parameters: the base ones (see _common.py) plus
  --student KIND       lm | probe (default train.student)
  --benchmarks NAMES   comma list of built-in benchmark names or JSONL files (default train.benchmarks)
"""

from _common import main, parser, settings_from, store_for
from prismatic.train import eval_stage, train_stage


def build_parser():
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--student", choices=["lm", "probe"], default=None)
    p.add_argument("--benchmarks", default=None)
    return p


def run() -> None:
    args = build_parser().parse_args()
    settings = settings_from(args)
    store = store_for(settings)
    report = train_stage(store, settings, student=args.student)
    print(report.summary())
    benchmarks = [b for b in (args.benchmarks or "").split(",") if b] or None
    for row in eval_stage(store, settings, model_path=report.path, benchmarks=benchmarks):
        print(f"{row['benchmark']}: accuracy {row['accuracy']:.4f} (n={row['n']})")


if __name__ == "__main__":
    main(run)
