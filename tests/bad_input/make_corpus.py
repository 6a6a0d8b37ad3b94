"""Write the bad-input corpus: one small file per kind of bad (or merely unusual) input for ``prism ingest``.

The expected outcome of each file (counts, quarantine reasons, notes, or the one error line) is in
``manifest.yaml`` next to this script; ``tests/integration/test_bad_input.py`` ingests every file and compares.
The files are generated rather than committed so that binary kinds (gzip, Parquet, UTF-16) and big rows stay
reviewable here. Try them by hand::

    python tests/bad_input/make_corpus.py /tmp/corpus
    prism --set data_root=/tmp/corpus-lake ingest /tmp/corpus/lone_surrogate.jsonl --source t
"""

from __future__ import annotations

import gzip
import json
import sys
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def good(case: str, n: int = 2) -> list[dict]:
    """``n`` valid rows whose text names the case (so no two cases share a sample)."""
    return [{"prompt": f"[{case}] what is {i} plus {i}?", "completion": f"It is {2 * i}."} for i in range(n)]


def jl(*rows: dict | bytes | str, ascii_only: bool = True, end: bytes = b"\n") -> bytes:
    """JSON Lines: dicts are dumped, bytes / str are written as they are."""
    out = []
    for r in rows:
        if isinstance(r, bytes):
            out.append(r)
        elif isinstance(r, str):
            out.append(r.encode("utf-8"))
        else:
            out.append(json.dumps(r, ensure_ascii=ascii_only).encode("utf-8"))
    return end.join(out) + end


def nested(depth: int) -> str:
    return "[" * depth + "1" + "]" * depth


def row(case: str, prompt: str, completion: str = "fine", **extra) -> dict:
    return {"prompt": f"[{case}] {prompt}" if prompt else prompt, "completion": completion, **extra}


def parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def _jsonl_cases() -> dict[str, Callable[[str], bytes]]:
    g = good
    return {
        "good.jsonl": lambda c: jl(*g(c, 3)),
        "lone_surrogate.jsonl": lambda c: jl(g(c)[0], row(c, "lone \ud800 high"), g(c)[1]),
        "lone_low_surrogate.jsonl": lambda c: jl(g(c)[0], b'{"prompt": "low \\udc00 alone", "completion": "x"}'),
        "surrogate_pairs.jsonl": lambda c: jl(
            b'{"prompt": "[%s] emoji \\ud83d\\ude00", "completion": "ok"}' % c.encode(),
            b'{"prompt": "[%s] reversed \\ude00\\ud83d", "completion": "x"}' % c.encode(),
        ),
        "deep_10000.jsonl": lambda c: jl(
            g(c)[0], '{"prompt": "p", "completion": "c", "x": ' + nested(10_000) + "}", g(c)[1]
        ),
        "deep_150.jsonl": lambda c: jl(g(c)[0], '{"prompt": "p", "completion": "c", "x": ' + nested(150) + "}"),
        "deep_50_ok.jsonl": lambda c: jl(json.dumps(row(c, "fifty deep"))[:-1] + ', "x": ' + nested(50) + "}"),
        "not_utf8_latin1.jsonl": lambda c: jl(g(c)[0], b'{"prompt": "caf\xe9", "completion": "x"}', g(c)[1]),
        "not_utf8_overlong.jsonl": lambda c: jl(g(c)[0], b'{"prompt": "slash \xc0\xaf", "completion": "x"}'),
        "not_utf8_cesu_surrogate.jsonl": lambda c: jl(b'{"prompt": "cesu \xed\xa0\x80", "completion": "x"}', g(c)[0]),
        "row_too_large.jsonl": lambda c: jl(g(c)[0], row(c, "big " * 2500), g(c)[1]),
        "nul_escaped.jsonl": lambda c: jl(g(c)[0], row(c, "nul \u0000 inside")),
        "nul_raw_byte.jsonl": lambda c: jl(g(c)[0], b'{"prompt": "raw \x00 nul", "completion": "x"}'),
        "zero_width_only.jsonl": lambda c: jl(
            g(c)[0], {"prompt": "\u200b\u200c\u200d", "completion": "x"}, ascii_only=False
        ),
        "invisible_only.jsonl": lambda c: jl(
            {"prompt": "\ufeff\u2060\u00ad", "completion": "x"},
            {"prompt": "\u3164\u2800", "completion": "y"},
            {"prompt": f"[{c}] a\u200bb", "completion": "visible with a zero-width space"},
            ascii_only=False,
        ),
        "whitespace_text.jsonl": lambda c: jl({"prompt": "\t \u3000 ", "completion": "x"}, g(c)[0]),
        "bidi_and_controls_ok.jsonl": lambda c: jl(
            row(c, "\u202eevil\u202c right to left"), row(c, "ansi \u001b[31mred\u001b[0m")
        ),
        "bom.jsonl": lambda c: b"\xef\xbb\xbf" + jl(*g(c)),
        "utf16_bom.jsonl": lambda c: "\ufeff".encode("utf-16-le") + jl(*g(c)).decode().encode("utf-16-le"),
        "utf16be_no_bom.jsonl": lambda c: jl(*g(c)).decode().encode("utf-16-be"),
        "utf32_bom.jsonl": lambda c: jl(*g(c)).decode().encode("utf-32"),
        "utf16_broken.jsonl": lambda c: (
            "\ufeff".encode("utf-16-le") + jl(*g(c)).decode().encode("utf-16-le") + b"\x00\xd8a\x00"
        ),
        "empty.jsonl": lambda c: b"",
        "whitespace_only.jsonl": lambda c: b"\n  \n\t\n",
        "blank_lines.jsonl": lambda c: jl(g(c)[0], b"", b"   ", g(c)[1], b""),
        "crlf.jsonl": lambda c: jl(*g(c), end=b"\r\n"),
        "cr_only.jsonl": lambda c: jl(*g(c, 3), end=b"\r"),
        "mixed_newlines.jsonl": lambda c: jl(g(c, 3)[0]) + jl(g(c, 3)[1], end=b"\r\n") + jl(g(c, 3)[2], end=b"\r"),
        "no_final_newline.jsonl": lambda c: jl(*g(c))[:-1],
        "truncated_last_row.jsonl": lambda c: jl(g(c)[0]) + json.dumps(g(c)[1])[:-12].encode(),
        "trailing_garbage.jsonl": lambda c: jl(g(c)[0], json.dumps(g(c)[1]) + " xyz"),
        "two_objects_one_line.jsonl": lambda c: jl(json.dumps(g(c)[0]) + json.dumps(g(c)[1])),
        "huge_int.jsonl": lambda c: jl(g(c)[0], '{"prompt": "p", "completion": "c", "n": ' + "9" * 5000 + "}"),
        "huge_float.jsonl": lambda c: jl(
            json.dumps(row(c, "inf extra"))[:-1] + ', "x": 1e999}', '{"prompt": "p", "completion": 1e999}'
        ),
        "nan_infinity.jsonl": lambda c: jl(
            json.dumps(row(c, "nan extra"))[:-1] + ', "score": NaN}',
            '{"prompt": "p", "completion": NaN}',
            '{"prompt": Infinity, "completion": "c"}',
        ),
        "duplicate_keys.jsonl": lambda c: jl(
            g(c)[0],
            '{"prompt": "benign", "prompt": "evil", "completion": "c"}',
            '{"prompt": "p", "completion": "c", "meta": {"a": 1, "a": 2}}',
            '{"prompt": "p", "\\u0070rompt": "escaped twin", "completion": "c"}',
        ),
        "escaped_key_ok.jsonl": lambda c: jl(f'{{"\\u0070rompt": "[{c}] escaped key", "completion": "c"}}'),
        "wrong_types.jsonl": lambda c: jl(
            {"prompt": ["a"], "completion": "c"},
            {"prompt": "p", "completion": {"a": 1}},
            {"prompt": "p", "completion": True},
            {"prompt": None, "completion": "c"},
            g(c)[0],
        ),
        "non_object_rows.jsonl": lambda c: jl("[1, 2]", '"a string"', "42", "null", "true", g(c)[0]),
        "empty_object.jsonl": lambda c: jl("{}", g(c)[0]),
        "too_long_text.jsonl": lambda c: jl(row(c, "long " * 300, "x" * 600), g(c)[0]),
        "payload_cut.jsonl": lambda c: jl(row(c, "a valid row with a long payload " + "z" * 600)),
        "duplicates_within_file.jsonl": lambda c: jl(
            g(c)[0],
            g(c)[0],
            {
                "prompt": g(c)[0]["prompt"].replace("what", "\uff57\uff48\uff41\uff54"),
                "completion": g(c)[0]["completion"],
            },
            ascii_only=False,
        ),
        "messages_null_uses_prompt.jsonl": lambda c: jl(row(c, "prompt wins", messages=None)),
    }


def _chat(c: str) -> bytes:
    u, a = {"role": "user", "content": f"[{c}] hi"}, {"role": "assistant", "content": "hello"}
    return jl(
        {"messages": [u, a]},
        {"messages": [{"role": "system", "content": "be brief"}, {**u, "content": f"[{c}] with system"}, a]},
        {"messages": json.dumps([{**u, "content": f"[{c}] as a string"}, a])},
        {"messages": [u, a, {**u, "content": "again"}, {**a, "content": "bye"}]},
        {"messages": [{"role": ["user"], "content": "role is a list"}, a]},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "parts"}]}, a]},
        {"messages": [u]},
        {"messages": [{"role": "tool", "content": "x"}, a]},
        {"messages": []},
        {"messages": "not json ["},
        {"messages": [{"from": "human", "value": "sharegpt"}, {"from": "gpt", "value": "x"}]},
        {"messages": [{**u, "content": "nul \u0000"}, a]},
        {"messages": json.dumps([u, a])[:-1] + ", " + nested(150) + "]"},
    )


def _nli(c: str) -> bytes:
    def r(label, s1=f"[{c}] A man plays.", s2="A person moves."):
        return {"sentence1": s1, "sentence2": s2, "gold_label": label}

    return jl(
        r("entailment"),
        r("CONTRADICTION "),
        r(0),
        r("-"),
        r("maybe"),
        r(None),
        r("neutral", s1="\u200b\u200b"),
        r("neutral", s2=" "),
        ascii_only=False,
    )


def _csv_cases() -> dict[str, Callable[[str], bytes]]:
    def p(c: str, i: int) -> str:
        return f"[{c}] q{i}"

    return {
        "bom.csv": lambda c: f"\ufeffprompt,completion\n{p(c, 1)},a\n{p(c, 2)},b\n".encode(),
        "utf16.csv": lambda c: f"\ufeffprompt,completion\r\n{p(c, 1)},a\r\n".encode("utf-16-le"),
        "quotes_newlines.csv": lambda c: (
            f'prompt,completion\n"{p(c, 1)}, with a comma","line one\nline two"\n"{p(c, 2)} says ""hi""",b\n'
        ).encode(),
        "semicolon.csv": lambda c: f"prompt;completion\n{p(c, 1)}, with a comma;a\n{p(c, 2)};b\n".encode(),
        "tab_separated.csv": lambda c: f"prompt\tcompletion\n{p(c, 1)}\ta\n".encode(),
        "bad_rows.csv": lambda c: f"prompt,completion\n{p(c, 1)},a\nx,y,z\nshort\n".encode() + b"caf\xe9,x\n",
        "header_spaces.csv": lambda c: f" prompt , completion \n{p(c, 1)},a\n".encode(),
        "duplicate_header.csv": lambda c: f"prompt,prompt,completion\n{p(c, 1)},b,c\n".encode(),
        "nul_field.csv": lambda c: f"prompt,completion\n{p(c, 1)},a\nx\x00y,b\n".encode(),
        "huge_field.csv": lambda c: f'prompt,completion\n{p(c, 1)},a\n"{"w" * 10_000}",b\n{p(c, 2)},c\n'.encode(),
        "unterminated_quote.csv": lambda c: f'prompt,completion\n{p(c, 1)},a\n"never closed,b\n{p(c, 2)},c\n'.encode(),
        "header_only.csv": lambda c: b"prompt,completion\n",
        "empty.csv": lambda c: b"",
        "missing_columns.csv": lambda c: f"question,answer\n{p(c, 1)},a\n{p(c, 2)},b\n".encode(),
        "crlf.csv": lambda c: f"prompt,completion\r\n{p(c, 1)},a\r\n{p(c, 2)},b\r\n".encode(),
        "blank_records.csv": lambda c: f"prompt,completion\n\n{p(c, 1)},a\n   \n".encode(),
        "zero_width.csv": lambda c: "prompt,completion\n\u200b,a\n".encode(),
    }


def _json_cases() -> dict[str, Callable[[str], bytes]]:
    return {
        "array.json": lambda c: json.dumps([*good(c, 3), 42], indent=2).encode(),
        "object.json": lambda c: json.dumps(good(c, 1)[0], indent=2).encode(),
        "lines.json": lambda c: jl(*good(c)),
        "lines_broken_first.json": lambda c: jl('{"prompt": "broken",', good(c)[0]),
        "broken_array.json": lambda c: json.dumps(good(c), indent=2).encode()[:-20],
        "array_deep.json": lambda c: ("[" + nested(5000) + "]").encode(),
        "array_gz.json.gz": lambda c: gzip.compress(json.dumps(good(c)).encode()),
    }


def _binary_cases() -> dict[str, Callable[[str], bytes]]:
    def tbl(c: str, n: int = 2) -> pa.Table:
        return pa.Table.from_pylist(good(c, n))

    return {
        "good.parquet": lambda c: parquet_bytes(tbl(c)),
        "wrong_types.parquet": lambda c: parquet_bytes(pa.table({"prompt": [1, 2], "completion": ["a", "b"]})),
        "binary_text.parquet": lambda c: parquet_bytes(pa.table({"prompt": [b"bytes"], "completion": ["a"]})),
        "nested.parquet": lambda c: parquet_bytes(
            pa.Table.from_pylist(
                [
                    {
                        "messages": [
                            {"role": "user", "content": f"[{c}] nested"},
                            {"role": "assistant", "content": "ok"},
                        ],
                        "meta": {"source": {"name": "x", "tags": ["a", "b"]}},
                    },
                ]
            )
        ),  # fmt: skip
        "nulls.parquet": lambda c: parquet_bytes(pa.table({"prompt": [f"[{c}] q", None], "completion": ["a", "b"]})),
        "zero_rows.parquet": lambda c: parquet_bytes(tbl(c).slice(0, 0)),
        "corrupt.parquet": lambda c: b"PAR1 this is not a parquet file PAR1",
        "good.jsonl.gz": lambda c: gzip.compress(jl(*good(c))),
        "bom_utf16.jsonl.gz": lambda c: gzip.compress(jl(*good(c)).decode().encode("utf-16")),
        "truncated.jsonl.gz": lambda c: gzip.compress(jl(*good(c, 200)))[:-40],
        "not_gzip.jsonl.gz": lambda c: jl(*good(c)),
        "chat.jsonl": _chat,
        "nli_labels.jsonl": _nli,
    }


def cases() -> dict[str, Callable[[str], bytes]]:
    """File name -> a function of the case name that returns the file's bytes."""
    return {**_jsonl_cases(), **_csv_cases(), **_json_cases(), **_binary_cases()}


def write_corpus(folder: Path) -> list[Path]:
    """Write every corpus file into ``folder``; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name, build in cases().items():
        path = folder / name
        path.write_bytes(build(name))
        out.append(path)
    return out


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "bad_input_corpus")
    files = write_corpus(target)
    print(f"wrote {len(files)} files ({sum(f.stat().st_size for f in files)} bytes) to {target}")
