"""`retain ingest` of a large orders CSV: time and peak memory, and the chunked path's quarantine against
the whole-file path's (issue 14, item 5).

Writes an orders CSV of `--rows` rows from a simulated shop's orders (repeated with the copy number in
the member and order ids, so every copy is a shop of new members) with bad rows of every kind mixed in
(a bad date, a bad amount, a negative amount, an order id seen earlier, a guest), then:

1. runs `retain ingest` on it in its own process (wall time, peak RSS of that process);
2. on the file's first `--compare-rows` rows, ingests once in chunks (the default) and once whole (one
   chunk) in this process and checks that the two reports and quarantine files are identical.

    python bench/bench_ingest_stream.py [--data data/bench_1m] [--rows 50000000]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
from bench_engine import measure

from retain.dataset import open_dataset
from retain.ingest import ingest

BAD_EVERY = 100_003  # one bad row in about a hundred thousand (kinds in turn): 0.001%, under max_bad_share
COLUMNS = ["order_id", "member_id", "ordered_at", "amount", "quantity", "category", "status"]


def write_orders(source: pd.DataFrame, path: Path, rows: int) -> None:
    """`rows` rows of `source`'s orders, copy after copy, as one CSV, with bad rows every BAD_EVERY."""
    text = pd.DataFrame(
        {
            "order_id": source["order_id"].astype(str),
            "member_id": source["member_id"].astype(str),
            "ordered_at": source["ordered_at"].dt.strftime("%Y-%m-%d %H:%M:%S"),
            "amount": source["amount"].round(2).astype(str),
            "quantity": source["quantity"].astype(str),
            "category": source["category"].astype(str),
            "status": source["status"].astype(str),
        }
    )
    bad_kinds = [
        ("ordered_at", "2025-13-45"),
        ("amount", "ten"),
        ("amount", "-5"),
        ("order_id", None),
        ("member_id", ""),
    ]
    written, copy = 0, 0
    with pacsv.CSVWriter(str(path), pa.Schema.from_pandas(text, preserve_index=False)) as writer:
        while written < rows:
            part = text.iloc[: rows - written].copy()
            part["order_id"] = part["order_id"] + f"-{copy}"
            part["member_id"] = part["member_id"] + f"-{copy}"
            at = np.arange(written, written + len(part))
            for k, (column, value) in enumerate(bad_kinds):
                rows_of_kind = np.flatnonzero((at % BAD_EVERY == 0) & ((at // BAD_EVERY) % len(bad_kinds) == k))
                if column == "order_id":  # the id of the first row of this copy: a duplicate
                    part.iloc[rows_of_kind[rows_of_kind > 0], 0] = part.iloc[0, 0]
                else:
                    part.iloc[rows_of_kind, COLUMNS.index(column)] = value
            writer.write_table(pa.Table.from_pandas(part, preserve_index=False))
            written += len(part)
            copy += 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("data/bench_1m"), help="a simulated shop to copy orders from")
    parser.add_argument("--rows", type=int, default=50_000_000)
    parser.add_argument("--compare-rows", type=int, default=2_000_000)
    parser.add_argument("--keep", type=Path, help="write the CSV here and keep it (default: a temporary folder)")
    args = parser.parse_args()
    source = open_dataset(args.data).read("orders", COLUMNS)
    with tempfile.TemporaryDirectory(dir=args.keep.parent if args.keep else None) as tmp:
        csv = args.keep or Path(tmp) / "orders.csv"
        started = time.perf_counter()
        write_orders(source, csv, args.rows)
        size_gib = csv.stat().st_size / 2**30
        print(f"wrote {csv} ({args.rows:,} rows, {size_gib:.2f} GiB) in {time.perf_counter() - started:.0f} s")

        out = Path(tmp) / "data"
        command = [str(Path(sys.executable).with_name("retain")), "ingest", "--orders", str(csv), "--out", str(out)]
        # RSS polled (bench_engine.measure): a forked child's ru_maxrss counts this process's pages before exec
        seconds, peak_gib, _ = measure(command, dict(os.environ))
        report = json.loads((out / "ingest_report.json").read_text())["tables"]["orders"]
        print(f"retain ingest: {seconds:.0f} s, peak RSS {peak_gib:.2f} GiB (bar 3 GiB)")
        print(f"  rows read {report['rows_read']:,}, kept {report['rows_kept']:,}, guests {report['guest']:,}")
        print(f"  quarantined {report['rows_quarantined']:,}: {report['quarantined_by_reason']}")

        prefix = Path(tmp) / "prefix.csv"
        with csv.open("rb") as full, prefix.open("wb") as part:
            for _, line in zip(range(args.compare_rows + 1), full, strict=False):
                part.write(line)
        chunked = ingest({"orders": prefix}, Path(tmp) / "chunked")
        whole = ingest({"orders": prefix}, Path(tmp) / "whole", chunk_rows=args.compare_rows + 1)
        quarantines = [
            pd.read_parquet(Path(tmp) / name / "quarantine" / "orders.parquet") for name in ("chunked", "whole")
        ]
        same = chunked == whole and quarantines[0].equals(quarantines[1])
        print(
            f"first {args.compare_rows:,} rows, in chunks and whole: {len(quarantines[0]):,} quarantined rows; "
            f"reports and quarantine files identical: {same}"
        )
    return 0 if same and peak_gib <= 3 else 1


if __name__ == "__main__":
    sys.exit(main())
