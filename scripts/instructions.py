#!/usr/bin/env python3
"""Instructions per event of `lockstep run`, by stage, counted by callgrind.

Wall-clock time on a shared VM drifts by ±15% within minutes; instruction
counts hardly do (two runs of one binary on one input agree within 0.1%;
the threads' interleaving makes the rest). This script is the measure for
changes of a few percent to the batch path. It does not see what costs
cycles without instructions (cache misses, atomic operations, divisions):
confirm a change that trades those with a timed run.

    python3 scripts/instructions.py --lockstep target/release/lockstep \\
        --input vs-duckdb/bursty-2000000.parquet --events 200000

It cuts the first --events events of --input into a Parquet file (with
DuckDB, written apart from lockstep), runs `lockstep run --threads 1` of
the view under `valgrind --tool=callgrind` (about 80× slower than native:
200k events take ~20 s), and prints the inclusive instruction count per
input event of the whole run and of each stage ("-" for a stage whose
function the compiler inlined into its caller). `--baseline OUT` compares
with the callgrind output file of an earlier run on the same cut (printed
at the end of each run). Needs valgrind and the duckdb Python package.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))

# (label, a regular expression matched against the function part of
# callgrind_annotate's "file:function" column); when several functions
# match (a function's inlined copies are listed per source file), the
# largest inclusive count is the stage's.
STAGES = [
    ("reader thread: decode, validate, route", r"lockstep_cli::run::read_stage$"),
    ("shard worker", r"lockstep_cli::run::shard_worker$"),
    ("  FILTER and CASE inputs, WHERE, QUALIFY", r"(ViewState::inputs|Prepared::new)$"),
    ("  on_event", r"ViewState::on_event(_prepared)?$"),
    ("    releasing held rows (finish_row)", r"ViewState::finish_row$"),
    ("      SELECT of final rows (emit)", r"ViewState::emit$"),
    ("    window values (eval_call)", r"partition::eval_call$"),
    ("      moving sliding frames", r"Slide::move_to$"),
    ("    inserting into partitions", r"Partition::insert(_parts)?$"),
    ("    partition lookup", r"Group::find_or_insert$"),
    ("    expiring events", r"Partition::expire$"),
    ("  end-of-input flush", r"Engine::finish$"),
    ("writer thread: rows to Arrow, Parquet", r"lockstep_cli::run::write_stage$"),
    ("malloc", r"__rust_alloc$"),
    ("free", r"__rust_dealloc$"),
    ("realloc", r"__rust_realloc$"),
]


def inclusive(out_file):
    """{function name: inclusive instructions} and the program total."""
    # every function (the default hides those under 1% inclusive), no source
    text = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100",
                           "--auto=no", out_file], check=True, capture_output=True,
                          text=True).stdout
    funcs, total = {}, None
    for line in text.splitlines():
        m = re.match(r"\s*([\d,]+)\s+(\([^)]*\)\s+)?(\*\s+)?(.*?)(\s+\[.*\])?$", line)
        if not m:
            continue
        n = int(m.group(1).replace(",", ""))
        name = m.group(4)
        if name == "PROGRAM TOTALS":
            total = n
            continue
        func = name.split(":", 1)[-1]
        funcs[func] = max(funcs.get(func, 0), n)
    if total is None:
        sys.exit(f"no PROGRAM TOTALS in callgrind_annotate's output of {out_file}")
    return funcs, total


def stages(out_file):
    funcs, total = inclusive(out_file)
    rows = [("whole run", total)]
    for label, pattern in STAGES:
        rx = re.compile(r"(^|::)" + pattern)
        hits = [n for f, n in funcs.items() if rx.search(f)]
        rows.append((label, max(hits) if hits else None))
    return rows


def command_of(out_file):
    """The command line callgrind recorded in its output file."""
    with open(out_file, errors="replace") as f:
        for line in f:
            if line.startswith("cmd:"):
                return line[4:].strip()
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lockstep", required=True, help="path to the lockstep binary (release)")
    ap.add_argument("--input", required=True, help="an event file of the view's table (.parquet)")
    ap.add_argument("--events", type=int, default=200_000, help="how many leading events to run")
    ap.add_argument("--sql", default=os.path.join(HERE, "..", "config", "ad_features.sql"))
    ap.add_argument("--view", default="user_ad_features")
    ap.add_argument("--dir", default=None, help="where to keep the cut input and outputs")
    ap.add_argument("--baseline", help="a callgrind output file of an earlier run, to compare")
    a = ap.parse_args()

    for tool in ("valgrind", "callgrind_annotate"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed (Debian: apt-get install valgrind)")
    work = a.dir or tempfile.mkdtemp(prefix="lockstep-instructions-")
    os.makedirs(work, exist_ok=True)
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", os.path.splitext(os.path.basename(a.input))[0])
    cut = os.path.join(work, f"{stem}-first-{a.events}.parquet")
    if not os.path.exists(cut):
        try:
            import duckdb
        except ImportError:
            sys.exit("the duckdb Python package is needed to cut the input: pip install duckdb")
        src = os.path.abspath(a.input).replace("'", "''")
        dst = cut.replace("'", "''")
        duckdb.sql(f"COPY (SELECT * FROM read_parquet('{src}') LIMIT {a.events}) "
                   f"TO '{dst}' (FORMAT parquet, COMPRESSION snappy)")
    out_file = os.path.join(work, f"callgrind.out.{os.getpid()}")
    run = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out_file}",
                          a.lockstep, "run", "--sql", a.sql, "--view", a.view, "--input", cut,
                          "--output", os.path.join(work, "rows.parquet"), "--threads", "1"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if run.returncode != 0:
        sys.exit(f"lockstep run under callgrind failed (exit {run.returncode}):\n{run.stderr[-4000:]}")
    if a.baseline:
        # the baseline must have run the same cut, or per-event numbers lie
        mine, theirs = command_of(out_file) or "", command_of(a.baseline) or ""
        arg = lambda cmd: cmd.split("--input ", 1)[-1].split(" ", 1)[0]
        if os.path.basename(arg(mine)) != os.path.basename(arg(theirs)):
            print(f"warning: the baseline ran {arg(theirs)}, this run {arg(mine)}: per-event "
                  "numbers compare only if both hold the same events", file=sys.stderr)

    now = stages(out_file)
    before = stages(a.baseline) if a.baseline else None
    print(f"instructions per input event, {a.events:,} events of {a.input}, `lockstep run --threads 1`")
    head = f"{'stage':<44} {'now':>8}"
    if before:
        head += f" {'baseline':>9} {'change':>8}"
    print(head)
    for i, (label, n) in enumerate(now):
        cell = f"{n / a.events:8,.0f}" if n is not None else f"{'-':>8}"
        line = f"{label:<44} {cell}"
        if before:
            b = before[i][1]
            if b is not None and n is not None:
                line += f" {b / a.events:9,.0f} {100 * (n - b) / b:+7.1f}%"
        print(line)
    print(f"callgrind output: {out_file}")


if __name__ == "__main__":
    main()
