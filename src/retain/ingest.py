"""Ingest: read a shop's files (CSV or Parquet), map them to the contract, validate every row, and
write a canonical dataset. A bad row is never dropped silently: it goes to `quarantine/<table>.parquet`
with its original text, a reason code and its line number, and `ingest_report.json` counts them.
"""

from __future__ import annotations

import io
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from retain import contract as c
from retain.config import DEFAULT_TIMEZONE
from retain.dataset import atomic_folder, write_metadata, write_tables
from retain.errors import RetainError

FIRST_BAD_ROWS_SHOWN = 5
UTC_OFFSET = r"(?:[zZ]|[+-]\d{2}:?\d{2})$"  # a timestamp that ends in an offset from UTC
TRUE_TEXT = {"true", "1", "yes", "y", "t"}
FALSE_TEXT = {"false", "0", "no", "n", "f"}


class IngestRejected(RetainError):
    """Too many bad rows: nothing was written. `details` holds the counts and the first bad rows."""

    def __init__(self, message: str, details: str):
        super().__init__(message)
        self.details = details


@dataclass(frozen=True)
class TableMapping:
    """How one source file maps to a canonical table (one section of a mapping TOML)."""

    separator: str = ","
    header: bool = True
    encoding: str = "utf-8"
    columns: dict[str, str] = field(default_factory=dict)  # canonical name -> source name
    formats: dict[str, str] = field(default_factory=dict)  # canonical timestamp column -> strptime format
    defaults: dict[str, object] = field(default_factory=dict)  # canonical column -> value when the source lacks it


def load_mapping(path: Path | None) -> dict[str, TableMapping]:
    """Read a mapping TOML (one section per table); without a file every table maps by canonical names."""
    if path is None:
        return {}
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RetainError(f"Mapping file {path} does not exist.") from None
    except tomllib.TOMLDecodeError as exc:
        raise RetainError(f"Mapping file {path} is not valid TOML: {exc}.") from None
    mappings = {}
    for table, section in raw.items():
        if table not in c.TABLES:
            raise RetainError(f"Mapping file {path} has a section [{table}]; tables are {sorted(c.TABLES)}.")
        try:
            mappings[table] = TableMapping(**section)
        except TypeError as exc:
            raise RetainError(f"Mapping section [{table}] in {path} has an unknown key: {exc}.") from None
    return mappings


def read_source(path: Path, mapping: TableMapping) -> pd.DataFrame:
    """Read a CSV or Parquet file as text, keeping each row's physical line number in `_source_row`."""
    path = Path(path)
    if not path.exists():
        raise RetainError(f"Input file {path} does not exist.")
    if path.suffix.lower() == ".parquet":
        frame = pd.read_parquet(path)
        frame = frame.astype("str").where(frame.notna(), "")
        frame[c.QUARANTINE_ROW] = np.arange(1, len(frame) + 1)
        return frame
    text = _decode(path, mapping.encoding)
    separator = r"\s+" if mapping.separator == "whitespace" else mapping.separator
    frame = pd.read_csv(
        io.StringIO(text),
        sep=separator,
        header=0 if mapping.header else None,
        dtype=str,
        keep_default_na=False,
        skip_blank_lines=False,
    )
    if not mapping.header:
        frame.columns = [f"col{i + 1}" for i in range(frame.shape[1])]
    first_line = 2 if mapping.header else 1
    frame[c.QUARANTINE_ROW] = np.arange(first_line, first_line + len(frame))
    return frame


def _decode(path: Path, encoding: str) -> str:
    # UTF-8 with a byte-order mark is UTF-8: utf-8-sig reads both.
    codec = "utf-8-sig" if encoding.lower().replace("_", "-") in {"utf-8", "utf8"} else encoding
    data = path.read_bytes()
    try:
        return data.decode(codec)
    except UnicodeDecodeError as exc:
        raise RetainError(
            f"{path} is not valid {encoding}: byte {data[exc.start]:#04x} at position {exc.start} does not decode; "
            f"re-save the file as {encoding} or set `encoding` in the mapping."
        ) from None
    except LookupError:
        raise RetainError(f"The mapping names an unknown encoding {encoding!r} for {path}.") from None


def canonicalize(
    raw: pd.DataFrame,
    table: str,
    mapping: TableMapping,
    source_name: str,
    as_of: pd.Timestamp | None,
    timezone: str = DEFAULT_TIMEZONE,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Turn a source frame of text into (canonical rows, quarantined rows with `_reason`).

    `raw` has the source's columns as text plus `_source_row`. The canonical frame has the table's
    contract columns with their types; the quarantine frame keeps the original text of each bad row.
    """
    text = _rename(raw, table, mapping, source_name)
    reason = pd.Series(pd.NA, index=text.index, dtype="string")
    typed = {}
    for column, kind in c.TABLES[table].items():
        if column not in text:
            continue
        values, bad = _parse(text[column], kind, mapping.formats.get(column), timezone)
        if column in c.REQUIRED[table]:
            missing = values.isna() & ~bad.notna()
            bad = bad.mask(missing, c.MISSING_MEMBER_ID if column == c.MEMBER_ID else c.MISSING_VALUE)
        reason = reason.fillna(bad)
        typed[column] = values
    frame = pd.DataFrame(typed, index=text.index)
    if table == "orders" and c.STATUS in frame:
        frame[c.STATUS] = frame[c.STATUS].fillna(c.PAID)  # an order without status is paid
    if as_of is not None and table in c.TIME_COLUMN:
        reason = reason.fillna(pd.Series(c.FUTURE_DATE, index=frame.index).where(frame[c.TIME_COLUMN[table]] >= as_of))
    if table in c.UNIQUE_KEY:
        key = c.UNIQUE_KEY[table]
        duplicate = frame[key].where(reason.isna()).duplicated(keep="first") & reason.isna() & frame[key].notna()
        reason = reason.mask(duplicate, c.DUPLICATE_KEY[table])
    bad_rows = reason.notna()
    quarantine = raw.loc[bad_rows].copy()
    quarantine.insert(0, c.QUARANTINE_REASON, reason[bad_rows].astype(str))
    good = frame.loc[~bad_rows].reset_index(drop=True)
    return _with_contract_columns(good, table), quarantine.reset_index(drop=True)


def _rename(raw: pd.DataFrame, table: str, mapping: TableMapping, source_name: str) -> pd.DataFrame:
    """Select and rename the source columns to canonical names; fill defaults; derive order ids."""
    found = [col for col in raw.columns if col != c.QUARANTINE_ROW]
    text = pd.DataFrame(index=raw.index)
    for column in c.TABLES[table]:
        source = mapping.columns.get(column, column)
        if source in raw.columns:
            text[column] = raw[source].str.strip()
        elif column in mapping.defaults:
            text[column] = str(mapping.defaults[column])
    if table == "orders" and c.STATUS not in text:
        text[c.STATUS] = c.PAID  # an order without status is paid
    if table == "orders" and c.ORDER_ID not in text:
        # No order id in the source: the row's place in its file is a stable one. Identical rows are
        # real repeat purchases, so each keeps its own id.
        text[c.ORDER_ID] = source_name + ":" + raw[c.QUARANTINE_ROW].astype(str)
    missing = [col for col in c.REQUIRED[table] if col not in text]
    if missing:
        wanted = ", ".join(f"{col} (source column {mapping.columns.get(col, col)!r})" for col in missing)
        raise RetainError(
            f"The {table} file {source_name} lacks the required column {wanted}; it has {found}. "
            f"Map it in the mapping file's [{table}.columns] section."
        )
    return text


def shop_local(text: pd.Series, date_format: str | None, timezone: str) -> pd.Series:
    """Timestamps in the shop's zone, without a zone (the contract's form). A value with a UTC offset
    ("2025-03-01T10:00:00+08:00", "...Z") is converted to `timezone`; one without is taken as shop time
    already; rows may mix both and several offsets. What does not parse is NaT (the caller's bad_date)."""
    fmt = date_format or "ISO8601"
    with_offset = text.str.contains(UTC_OFFSET, regex=True, na=False)
    values = pd.Series(pd.NaT, index=text.index, dtype="datetime64[us]")
    if (~with_offset).any():
        values[~with_offset] = pd.to_datetime(text[~with_offset], format=fmt, errors="coerce")
    if with_offset.any():
        aware = pd.to_datetime(text[with_offset], format=fmt, errors="coerce", utc=True)
        values[with_offset] = aware.dt.tz_convert(timezone).dt.tz_localize(None)
    return values


def _parse(text: pd.Series, kind: object, date_format: str | None, timezone: str) -> tuple[pd.Series, pd.Series]:
    """Parse one text column by its contract kind; return (values, reason per bad row or NA)."""
    empty = text.isna() | (text == "")
    no_reason = pd.Series(pd.NA, index=text.index, dtype="string")
    if kind in ("id", "text"):
        return text.mask(empty).astype("str"), no_reason
    if kind == "timestamp":
        values = shop_local(text.mask(empty), date_format, timezone)
        return values, no_reason.mask(values.isna() & ~empty, c.BAD_DATE)
    if kind in ("money", "count"):
        numbers = pd.to_numeric(text.mask(empty), errors="coerce").astype(float)
        not_number = (numbers.isna() | ~np.isfinite(numbers.fillna(0))) & ~empty
        if kind == "count":
            not_number |= (numbers % 1 != 0) & numbers.notna()
        reason = no_reason.mask(not_number, c.BAD_AMOUNT).mask(~not_number & (numbers < 0), c.NEGATIVE_AMOUNT)
        numbers = numbers.where(~not_number)
        return (numbers.astype("Int64") if kind == "count" else numbers), reason
    if kind == "bool":
        lowered = text.str.lower()
        values = pd.Series(pd.NA, index=text.index, dtype="boolean")
        values = values.mask(lowered.isin(TRUE_TEXT), True).mask(lowered.isin(FALSE_TEXT), False)
        return values, no_reason.mask(values.isna() & ~empty, c.BAD_VALUE)
    lowered = text.str.lower()
    allowed = lowered.isin(list(kind))
    return lowered.where(allowed).astype("str"), no_reason.mask(~allowed & ~empty, c.BAD_VALUE)


def _with_contract_columns(frame: pd.DataFrame, table: str) -> pd.DataFrame:
    """Canonical column order and dtypes (booleans without missing values become plain bool)."""
    ordered = frame[[col for col in c.TABLES[table] if col in frame]]
    for column, kind in c.TABLES[table].items():
        if kind == "bool" and column in ordered:
            ordered = ordered.assign(**{column: ordered[column].astype(bool)})
    return ordered


@dataclass(frozen=True)
class TableResult:
    table: str
    rows: pd.DataFrame
    quarantine: pd.DataFrame
    rows_read: int

    def report(self) -> dict:
        reasons = self.quarantine[c.QUARANTINE_REASON].value_counts().sort_index()
        return {
            "rows_read": self.rows_read,
            "rows_kept": len(self.rows),
            "rows_quarantined": len(self.quarantine),
            "quarantined_by_reason": {str(k): int(v) for k, v in reasons.items()},
        }


def ingest(
    sources: dict[str, Path],
    out: Path,
    mapping_path: Path | None = None,
    as_of: pd.Timestamp | None = None,
    max_bad_share: float = 0.01,
    currency: str = "CNY",
    timezone: str = DEFAULT_TIMEZONE,
) -> dict:
    """Validate the source files and write the canonical dataset to `out`, atomically.

    Returns the ingest report. Raises `IngestRejected` (writing nothing) when a table's
    quarantined share passes `max_bad_share`, and `RetainError` for a file that cannot be read.
    """
    if "orders" not in sources:
        raise RetainError("An orders file is required (--orders).")
    mappings = load_mapping(mapping_path)
    results = {}
    for table, path in sources.items():
        mapping = mappings.get(table, TableMapping())
        raw = read_source(Path(path), mapping)
        if table == "orders" and raw.empty:
            raise RetainError(f"The orders file {path} has no rows; there is nothing to ingest.")
        rows, quarantine = canonicalize(raw, table, mapping, Path(path).name, as_of, timezone)
        results[table] = TableResult(table, rows, quarantine, rows_read=len(raw))
    _reject_if_too_bad(results, max_bad_share)
    orders = results["orders"].rows
    observed_until = as_of if as_of is not None else orders[c.ORDERED_AT].max().normalize() + pd.Timedelta(days=1)
    report = {"tables": {t: r.report() for t, r in results.items()}, "observed_until": observed_until.isoformat()}
    with atomic_folder(Path(out)) as folder:
        (folder / "quarantine").mkdir()
        write_tables(folder, {table: result.rows for table, result in results.items()})
        for table, result in results.items():
            if len(result.quarantine):
                result.quarantine.astype(
                    {col: str for col in result.quarantine.columns if col != c.QUARANTINE_ROW}
                ).to_parquet(folder / "quarantine" / f"{table}.parquet", index=False)
        write_metadata(folder, observed_until, currency, extra={"source": "ingest", "timezone": timezone})
        (folder / "ingest_report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


def _reject_if_too_bad(results: dict[str, TableResult], max_bad_share: float) -> None:
    for table, result in results.items():
        share = len(result.quarantine) / max(result.rows_read, 1)
        if share <= max_bad_share:
            continue
        counts = ", ".join(f"{reason}: {n}" for reason, n in result.report()["quarantined_by_reason"].items())
        first = result.quarantine.head(FIRST_BAD_ROWS_SHOWN)
        lines = [f"line {row[c.QUARANTINE_ROW]}: {row[c.QUARANTINE_REASON]}" for _, row in first.iterrows()]
        details = f"{table}: {len(result.quarantine)} of {result.rows_read} rows are bad ({counts})\n" + "\n".join(
            "  " + line for line in lines
        )
        raise IngestRejected(
            f"{share:.1%} of the {table} rows are bad, more than ingest.max_bad_share = {max_bad_share:.1%}; "
            "nothing was written. Fix the rows listed above or raise the limit.",
            details,
        )
