"""Peak memory and time of json.loads against json_body.parse_body, per kind of body.

    .venv/bin/python bench/json_body.py [--mb 100] [--kinds numeric,objects,...|all]

Writes each body of about ``--mb`` MB to a temporary file, then for each parser starts a
fresh interpreter that reads the file, notes its peak RSS (ru_maxrss), parses the body
once, and reports the peak RSS growth (also as a multiple of the body size) and the parse
time; ``400`` marks a body parse_body refuses (json_body.COST_RATIO), which it must do
before building its value.  Goals: numeric bodies ~1x, every other kind at most ~2x (the
parsed value within COST_RATIO x the body, plus the text json.loads decodes).

Kinds: ``numeric`` (``{"instances": <rows x 3 random floats>}``), and bodies TF Serving's
REST API accepts or a hostile client sends: ``objects`` (``[{}, {}, ...]``), ``empty``
(``["", ...]``), ``short`` (``["ab", ...]``), ``b64`` (``[{"b64": "<4 KB>"}, ...]``),
``b64small`` (``[{"b64": "AA=="}, ...]``), ``rows`` (``[{"x": 1.5}, ...]``), ``lists``
(``[[], [], ...]``), ``nested`` (``[[[["a"]]]], ...]``), ``keys`` (one object, unique keys),
``unicode`` (ASCII strings and one emoji), ``examples`` (classify: float features).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

CHILD = """
import json, resource, sys, time
raw = open(sys.argv[2], "rb").read()
from tfdeploy.tfs.json_body import BodyError, parse_body
parse = parse_body if sys.argv[1] == "parse_body" else json.loads
if sys.argv[3] == "examples":
    parse = (lambda raw: parse_body(raw, arrays=False)) if parse is parse_body else parse
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
try:
    value, status = parse(raw), "ok"
except BodyError:
    status = "400"
seconds = time.perf_counter() - start
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((after - before) * 1024, seconds, status)
"""

#: One repeated item of each kind, and how the body wraps the repetition.
KINDS = {
    "objects": (b"{}", b'{"instances": [', b"]}"),
    "empty": (b'""', b'{"instances": [', b"]}"),
    "short": (b'"ab"', b'{"instances": [', b"]}"),
    "b64": (b'{"b64": "' + b"QUJD" * 1024 + b'"}', b'{"instances": [', b"]}"),
    "b64small": (b'{"b64": "AA=="}', b'{"instances": [', b"]}"),
    "rows": (b'{"x": 1.5}', b'{"instances": [', b"]}"),
    "lists": (b"[]", b'{"instances": [', b"]}"),
    "nested": (b'[[[["a"]]]]', b'{"instances": [', b"]}"),
    "unicode": (b'"abcdefghijklmnopqrstuvwxyz0123456789"', b'{"instances": ["\xf0\x9f\x98\x80", ',
                b"]}"),
    "examples": (b'{"x": [0.1234567, 0.7654321, 0.5]}', b'{"examples": [', b"]}"),
}


def write_kind(path: Path, kind: str, megabytes: float) -> int:
    """A body of about ``megabytes`` MB of one kind, written a slice at a time."""
    total = int(megabytes * 1e6)
    if kind == "keys":
        with open(path, "wb") as out:
            out.write(b"{")
            i = 0
            while out.tell() < total:
                out.write(b",".join(b'"k%d": 0' % j for j in range(i, i + 10_000)) + b",")
                i += 10_000
            out.write(b'"end": 0}')
            return out.tell()
    item, head, tail = KINDS[kind]
    piece = b", ".join([item] * max(1, 1_000_000 // len(item)))
    with open(path, "wb") as out:
        out.write(head)
        while out.tell() < total:
            out.write(piece + b", ")
        out.write(item + tail)
        return out.tell()


def write_body(path: Path, megabytes: float) -> int:
    """A numeric body of about ``megabytes`` MB written a slice at a time (this process's
    own peak is not measured, but keeps the machine's free memory for the children)."""
    rng = np.random.default_rng(0)
    rows = int(megabytes * 1e6 / 62)          # about 62 bytes per row of three floats
    with open(path, "wb") as out:
        out.write(b'{"instances": [')
        for at in range(0, rows, 100_000):
            part = json.dumps(rng.random((min(100_000, rows - at), 3)).tolist())[1:-1]
            out.write((", " if at else "").encode() + part.encode())
        out.write(b"]}")
        return out.tell()


def measure(parser: str, path: Path, kind: str = "numeric") -> tuple[int, float, str]:
    out = subprocess.run([sys.executable, "-c", CHILD, parser, str(path), kind],
                         capture_output=True, text=True, check=True).stdout.split()
    return int(out[0]), float(out[1]), out[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=100.0, help="body size in MB")
    parser.add_argument("--kinds", default="numeric",
                        help="comma-separated kinds, or all (see the module docstring)")
    args = parser.parse_args()
    kinds = (["numeric", *KINDS, "keys"] if args.kinds == "all"
             else args.kinds.split(","))
    print(f"{'kind':9s} {'body MB':>8} | {'json.loads growth':>22} {'s':>6} | "
          f"{'parse_body growth':>22} {'s':>6} answer")
    for kind in kinds:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "body.json"
            size = (write_body(path, args.mb) if kind == "numeric"
                    else write_kind(path, kind, args.mb))
            jg, js, _ = measure("json.loads", path, kind)
            pg, ps, status = measure("parse_body", path, kind)
        print(f"{kind:9s} {size / 1e6:8.1f} | {jg / 1e6:9.1f} MB ({jg / size:5.2f}x) "
              f"{js:6.2f} | {pg / 1e6:9.1f} MB ({pg / size:5.2f}x) {ps:6.2f} {status}",
              flush=True)


if __name__ == "__main__":
    main()
