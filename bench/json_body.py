"""Peak memory and time of json.loads against json_body.parse_body on a numeric body.

    .venv/bin/python bench/json_body.py [--mb 100]

Writes ``{"instances": <rows x 3 random floats>}`` of about ``--mb`` MB to a temporary
file, then for each parser starts a fresh interpreter that reads the file, notes its peak
RSS (ru_maxrss), parses the body once, and reports the peak RSS growth and the parse time.
Growth is also given as a multiple of the body size (goal for parse_body: <= 3x).
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
if sys.argv[1] == "parse_body":
    from tfdeploy.tfs.json_body import parse_body as parse
else:
    parse = json.loads
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
value = parse(raw)
seconds = time.perf_counter() - start
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((after - before) * 1024, seconds)
"""


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


def measure(parser: str, path: Path) -> tuple[int, float]:
    out = subprocess.run([sys.executable, "-c", CHILD, parser, str(path)],
                         capture_output=True, text=True, check=True).stdout.split()
    return int(out[0]), float(out[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=100.0, help="body size in MB")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "body.json"
        size = write_body(path, args.mb)
        print(f"body: {size / 1e6:.1f} MB")
        results = {name: measure(name, path) for name in ("json.loads", "parse_body")}
    for name, (growth, seconds) in results.items():
        print(f"{name:11s} peak RSS growth {growth / 1e6:8.1f} MB ({growth / size:5.2f}x body)"
              f"  time {seconds:6.2f} s")
    (jg, js), (pg, ps) = results["json.loads"], results["parse_body"]
    print(f"json.loads / parse_body: memory {jg / max(pg, 1):.1f}x, time {js / ps:.1f}x")


if __name__ == "__main__":
    main()
