"""Ingest: read a shop's files (CSV or Parquet), map them to the contract, validate every row, and
write a canonical dataset. A bad row is never dropped silently: it goes to `quarantine/<table>.parquet`
with its original text, a reason code and its line number, and `ingest_report.json` counts them.
"""

from __future__ import annotations

import gzip
import json
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from retain import contract as c
from retain import order_lines as lines
from retain.config import DEFAULT_BUCKETS, DEFAULT_TIMEZONE
from retain.dataset import BucketWriter, atomic_folder, write_metadata
from retain.errors import RetainError

FIRST_BAD_ROWS_SHOWN = 5
CHUNK_ROWS = 500_000  # rows read, validated and written at a time
SALES, GUEST_SALES = "_sales", "_guest_sales"  # the orders' revenue, in all and by guests (for their share)
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
    # orders only (`retain.order_lines`): one row per order or per line item; which rows are cancellations;
    # patterns of values (per canonical column) whose rows are not purchases (postage, fees)
    grain: str = "order"
    cancel: lines.CancelRule = field(default_factory=lines.CancelRule)
    exclude: dict[str, list[str]] = field(default_factory=dict)


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
        if table != "orders" and {"grain", "cancel"} & set(section):
            raise RetainError(f"Mapping section [{table}] in {path}: grain and cancel are for [orders] only.")
        if "cancel" in section:
            section = {**section, "cancel": lines.cancel_rule(section["cancel"], str(path))}
        try:
            mapping = TableMapping(**section)
        except TypeError as exc:
            raise RetainError(f"Mapping section [{table}] in {path} has an unknown key: {exc}.") from None
        if mapping.grain not in lines.GRAINS:
            raise RetainError(
                f"Mapping [{table}] in {path}: grain = {mapping.grain!r}; it is one of {list(lines.GRAINS)}."
            )
        if mapping.grain == "order" and mapping.cancel.separate_rows:
            raise RetainError(
                f"Mapping [orders.cancel] in {path} marks cancellations as rows of their own (order_id_prefix, "
                'negative_quantity): set grain = "line" so they can be matched to the lines they cancel.'
            )
        mappings[table] = mapping
    return mappings


def read_source(path: Path, mapping: TableMapping) -> pd.DataFrame:
    """The whole file as text (`read_chunks` joined): for line items, whose orders may be anywhere in it."""
    return pd.concat(list(read_chunks(path, mapping)), ignore_index=True)


def read_chunks(path: Path, mapping: TableMapping, rows: int = CHUNK_ROWS) -> Iterator[pd.DataFrame]:
    """Read a CSV (or .csv.gz) or Parquet file as text, `rows` rows at a time, keeping each row's physical
    line number in `_source_row`. A file without rows still gives one (empty) frame with its columns."""
    path = Path(path)
    if not path.exists():
        raise RetainError(f"Input file {path} does not exist.")
    if path.suffix.lower() == ".parquet":
        file, first = pq.ParquetFile(path), 1
        for batch in file.iter_batches(batch_size=rows):
            frame = batch.to_pandas()
            frame = frame.astype("str").where(frame.notna(), "")
            frame[c.QUARANTINE_ROW] = np.arange(first, first + len(frame))
            first += len(frame)
            yield frame
        if first == 1:  # no rows: the columns alone
            yield pd.DataFrame(columns=[*file.schema_arrow.names, c.QUARANTINE_ROW])
        return
    # UTF-8 with a byte-order mark is UTF-8: utf-8-sig reads both.
    codec = "utf-8-sig" if mapping.encoding.lower().replace("_", "-") in {"utf-8", "utf8"} else mapping.encoding
    first = 2 if mapping.header else 1
    try:
        reader = pd.read_csv(
            path,
            sep=r"\s+" if mapping.separator == "whitespace" else mapping.separator,
            header=0 if mapping.header else None,
            dtype=str,
            keep_default_na=False,
            skip_blank_lines=False,
            encoding=codec,
            compression="gzip" if path.name.lower().endswith(".gz") else None,
            chunksize=rows,
        )
        for frame in reader:
            if not mapping.header:
                frame.columns = [f"col{i + 1}" for i in range(frame.shape[1])]
            frame[c.QUARANTINE_ROW] = np.arange(first, first + len(frame))
            first += len(frame)
            yield frame.reset_index(drop=True)
    except UnicodeDecodeError as exc:
        raise RetainError(
            f"{path} is not valid {mapping.encoding}: byte {exc.object[exc.start]:#04x} does not decode (near line "
            f"{first}); re-save the file as {mapping.encoding} or set `encoding` in the mapping."
        ) from None
    except LookupError:
        raise RetainError(f"The mapping names an unknown encoding {mapping.encoding!r} for {path}.") from None
    except (gzip.BadGzipFile, EOFError) as exc:
        raise RetainError(f"{path} ends in .gz but does not decompress ({exc}); is it a gzip file?") from None
    except pd.errors.EmptyDataError:
        raise RetainError(f"{path} is empty: not even a header line.") from None
    except pd.errors.ParserError as exc:
        raise RetainError(f"{path} is not a well-formed CSV near line {first}: {exc}") from None


class SeenKeys:
    """The unique keys (order ids, offer ids) of the rows kept from earlier chunks, so that a duplicate is
    found wherever in the file it is. Held as 64-bit hashes in one sorted array (400 MB for 50 million
    keys, not a set of strings); two different keys share a hash with a chance of about 1e-4 in a file of
    50 million, and the later row would then be quarantined as a duplicate, with its text, not lost."""

    def __init__(self) -> None:
        self.hashes = np.empty(0, dtype=np.uint64)

    @staticmethod
    def _hash(keys: pd.Series) -> np.ndarray:
        return pd.util.hash_array(keys.to_numpy(dtype=object))

    def contains(self, keys: pd.Series) -> np.ndarray:
        hashed = self._hash(keys)
        at = np.minimum(np.searchsorted(self.hashes, hashed), max(len(self.hashes) - 1, 0))
        return (self.hashes[at] == hashed) if len(self.hashes) else np.zeros(len(keys), dtype=bool)

    def add(self, keys: pd.Series) -> None:
        # stable sort of two sorted runs: a merge, linear in the keys held
        self.hashes = np.sort(np.concatenate([self.hashes, np.sort(self._hash(keys))]), kind="stable")


def canonicalize(
    raw: pd.DataFrame,
    table: str,
    mapping: TableMapping,
    source_name: str,
    as_of: pd.Timestamp | None,
    timezone: str = DEFAULT_TIMEZONE,
    text: pd.DataFrame | None = None,
    seen: SeenKeys | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Turn a source frame of text into (canonical rows, quarantined rows with `_reason`).

    `raw` has the source's columns as text plus `_source_row`. The canonical frame has the table's
    contract columns with their types; the quarantine frame keeps the original text of each bad row.
    `text`: `raw` already renamed to canonical columns (the orders path reads some values first).
    `seen`: the unique keys kept from earlier chunks of the same file (a key seen there is a duplicate
    here); the keys kept here are added to it.
    """
    text = _rename(raw, table, mapping, source_name) if text is None else text
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
        candidate = reason.isna() & frame[key].notna()
        duplicate = frame[key].where(reason.isna()).duplicated(keep="first") & candidate
        if seen is not None:
            duplicate |= candidate & seen.contains(frame[key])
            seen.add(frame[key][candidate & ~duplicate])
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
    for column in [*c.TABLES[table], *(lines.LINE_COLUMNS if table == "orders" else ())]:
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
    required = c.REQUIRED[table]
    if table == "orders" and mapping.grain == "line":  # the amount comes from the lines
        required = [col for col in required if col != c.AMOUNT]
        if lines.LINE_AMOUNT not in text and lines.UNIT_PRICE not in text:
            required = [*required, lines.UNIT_PRICE]
    missing = [col for col in required if col not in text]
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


def orders_result(
    raw: pd.DataFrame,
    mapping: TableMapping,
    source_name: str,
    as_of: pd.Timestamp | None,
    timezone: str,
    seen: SeenKeys | None = None,
) -> lines.OrderRows:
    """The orders file (or a chunk of it, with `seen` as in `canonicalize`; line items come whole): guests
    and excluded rows counted and set apart, then each row an order (`grain = "order"`) or the lines
    grouped into orders with their cancellations matched (`"line"`); see `retain.order_lines`."""
    text = _rename(raw, "orders", mapping, source_name)
    text[c.STATUS] = mapping.cancel.status_text(text[c.STATUS])
    guest = text[c.MEMBER_ID].fillna("") == ""
    excluded = ~guest & lines.excluded_rows(text, mapping.exclude)
    if mapping.grain == "line":
        amount = lines.line_amounts(text)[0]
    else:
        amount = pd.to_numeric(text[c.AMOUNT], errors="coerce")
    sales = amount.where(amount > 0, 0.0).fillna(0.0)[~excluded]
    counts = {
        lines.GUEST: int(guest.sum()),
        GUEST_SALES: float(sales[guest].sum()),
        SALES: float(sales.sum()),
        lines.EXCLUDED: int(excluded.sum()),
    }
    rest = ~guest & ~excluded
    if mapping.grain == "order":
        rows, quarantine = canonicalize(raw[rest], "orders", mapping, source_name, as_of, timezone, text[rest], seen)
        no_rows = raw.iloc[:0].assign(**{c.QUARANTINE_REASON: pd.Series(dtype=str)})
        counts |= {"lines_kept": len(rows), lines.CANCELLED: 0, lines.UNMATCHED: 0}
        return lines.OrderRows(rows, quarantine, no_rows, counts)
    return _line_orders(raw[rest], text[rest], mapping, as_of, timezone, counts)


def _line_orders(
    raw: pd.DataFrame,
    text: pd.DataFrame,
    mapping: TableMapping,
    as_of: pd.Timestamp | None,
    timezone: str,
    counts: dict,
) -> lines.OrderRows:
    """Line items (no guests, nothing excluded) into orders, cancellations matched, bad lines quarantined."""
    reason = pd.Series(pd.NA, index=text.index, dtype="string")
    for column in (c.ORDER_ID, c.ORDERED_AT):
        reason = reason.mask(reason.isna() & (text[column].fillna("") == ""), c.MISSING_VALUE)
    ordered_at = shop_local(
        text[c.ORDERED_AT].mask(text[c.ORDERED_AT] == ""), mapping.formats.get(c.ORDERED_AT), timezone
    )
    reason = reason.mask(reason.isna() & ordered_at.isna(), c.BAD_DATE)
    amount, quantity, bad_number = lines.line_amounts(text)
    reason = reason.mask(reason.isna() & (bad_number | amount.isna()), c.BAD_AMOUNT)
    status, bad_status = _parse(text[c.STATUS], c.STATUSES, None, timezone)
    reason = reason.fillna(bad_status)
    if as_of is not None:
        reason = reason.mask(reason.isna() & (ordered_at >= as_of), c.FUTURE_DATE)
    cancel = mapping.cancel.marks(text, quantity) & reason.isna()
    reason = reason.mask(reason.isna() & ~cancel & ((amount < 0) | (quantity < 0)), c.NEGATIVE_AMOUNT)

    frame = pd.DataFrame(
        {
            c.ORDER_ID: text[c.ORDER_ID],
            c.MEMBER_ID: text[c.MEMBER_ID],
            c.ORDERED_AT: ordered_at,
            c.AMOUNT: amount,
            c.QUANTITY: quantity,
            c.STATUS: status,
            **{
                col: text[col].mask(text[col] == "")
                for col in (lines.PRODUCT_ID, c.CATEGORY, c.COUPON_ID)
                if col in text
            },
        }
    )
    sale = reason.isna() & ~cancel
    members = frame[sale].groupby(c.ORDER_ID)[c.MEMBER_ID].nunique()
    conflict = sale & frame[c.ORDER_ID].isin(members.index[members > 1])
    reason = reason.mask(conflict, c.ORDER_MEMBER_CONFLICT)
    sale &= ~conflict
    sale_lines = frame[sale]
    orders = lines.group_lines(sale_lines.drop(columns=[c.STATUS]))
    refunded = sale_lines.loc[sale_lines[c.STATUS] == c.REFUNDED, c.ORDER_ID].unique()
    orders[c.STATUS] = np.where(orders[c.ORDER_ID].isin(refunded), c.REFUNDED, c.PAID)
    cancels = frame[cancel]
    matched = lines.match_cancellations(cancels, sale_lines, mapping.cancel.order_id_prefix)
    orders = lines.apply_refunds(orders, cancels, matched)

    bad = reason.notna()
    quarantine = raw[bad].copy()
    quarantine.insert(0, c.QUARANTINE_REASON, reason[bad].astype(str))
    unmatched = raw[cancel][matched.isna().to_numpy()].copy()
    unmatched.insert(0, c.QUARANTINE_REASON, c.UNMATCHED_CANCELLATION)
    counts |= {
        "lines_kept": int(sale.sum()),
        lines.CANCELLED: int(matched.notna().sum()),
        lines.UNMATCHED: int(matched.isna().sum()),
    }
    rows = _with_contract_columns(orders, "orders")
    return lines.OrderRows(rows, quarantine.reset_index(drop=True), unmatched.reset_index(drop=True), counts)


@dataclass
class TableResult:
    """One table after ingest: its rows are written (`rows_written`); the bad ones are here."""

    table: str
    quarantine: pd.DataFrame | None = None  # bad rows: counted against ingest.max_bad_share
    rows_read: int = 0
    rows_written: int = 0
    set_aside: pd.DataFrame | None = None  # kept in the quarantine file, not bad (unmatched cancellations)
    counts: dict = field(default_factory=dict)  # the orders' other kinds of row (retain.order_lines)
    last_at: pd.Timestamp | None = None  # the latest value of the table's time column (the orders' end)

    def add(
        self,
        quarantine: pd.DataFrame,
        rows_read: int,
        written: pd.DataFrame,
        counts: dict | None = None,
        set_aside: pd.DataFrame | None = None,
    ) -> None:
        """Count one chunk in: its bad rows, rows read, rows written and (orders) the other kinds of row and
        the rows set aside."""
        self.quarantine = _appended(self.quarantine, quarantine)
        if set_aside is not None and len(set_aside):
            self.set_aside = _appended(self.set_aside, set_aside)
        self.rows_read += rows_read
        self.rows_written += len(written)
        for key, value in (counts or {}).items():
            self.counts[key] = self.counts.get(key, 0) + value
        time = c.TIME_COLUMN.get(self.table)
        if time in written and written[time].notna().any():
            latest = written[time].max()
            self.last_at = latest if self.last_at is None else max(self.last_at, latest)

    def report(self) -> dict:
        reasons = self.quarantine[c.QUARANTINE_REASON].value_counts().sort_index()
        report = {
            "rows_read": self.rows_read,
            "rows_kept": self.counts.get("lines_kept", self.rows_written),
            "rows_quarantined": len(self.quarantine),
            "quarantined_by_reason": {str(k): int(v) for k, v in reasons.items()},
        }
        if self.counts:  # the orders: every row read is kept, quarantined, or one of these
            sales, guest_sales = self.counts.get(SALES, 0.0), self.counts.get(GUEST_SALES, 0.0)
            for key, value in self.counts.items():
                if key == SALES:
                    report["guest_revenue_share"] = round(guest_sales / sales if sales > 0 else 0.0, 6)
                elif key not in ("lines_kept", GUEST_SALES):
                    report[key] = value
            report["orders_written"] = self.rows_written
        return report

    def quarantine_file(self) -> pd.DataFrame:
        """What goes to quarantine/<table>.parquet: the bad rows, then the rows set aside."""
        parts = [self.quarantine] + ([self.set_aside] if self.set_aside is not None and len(self.set_aside) else [])
        return pd.concat(parts, ignore_index=True) if len(parts) > 1 else self.quarantine


def _appended(kept: pd.DataFrame | None, more: pd.DataFrame) -> pd.DataFrame:
    """`more` rows after `kept` (the first chunk's frame as it is, even empty: it carries the columns)."""
    return more if kept is None else (pd.concat([kept, more], ignore_index=True) if len(more) else kept)


def ingest(
    sources: dict[str, Path],
    out: Path,
    mapping_path: Path | None = None,
    as_of: pd.Timestamp | None = None,
    max_bad_share: float = 0.01,
    currency: str = "CNY",
    timezone: str = DEFAULT_TIMEZONE,
    buckets: int = DEFAULT_BUCKETS,
    chunk_rows: int = CHUNK_ROWS,
) -> dict:
    """Validate the source files and write the canonical dataset to `out` (each table in `buckets` member
    buckets), atomically.

    Each file is read, validated and written `chunk_rows` rows at a time (memory is bounded by a chunk and
    the bad rows, not by the file); line items are read whole, as the lines of one order may be anywhere
    in the file. Returns the ingest report. Raises `IngestRejected` (writing nothing) when a table's
    quarantined share passes `max_bad_share`, and `RetainError` for a file that cannot be read.
    """
    if "orders" not in sources:
        raise RetainError("An orders file is required (--orders).")
    mappings = load_mapping(mapping_path)
    results = {}
    with atomic_folder(Path(out)) as folder:
        for table, path in sources.items():
            mapping = mappings.get(table, TableMapping())
            with BucketWriter(folder, table, buckets) as writer:
                results[table] = _ingest_file(writer, Path(path), mapping, as_of, timezone, chunk_rows)
        _reject_if_too_bad(results, max_bad_share)
        last = results["orders"].last_at
        if last is None:  # every row a guest, excluded or quarantined (within max_bad_share)
            raise RetainError(
                f"No order of {sources['orders']} was kept (every row is a guest's, excluded or quarantined); "
                "there is nothing to ingest: check the member_id column in the mapping."
            )
        observed_until = as_of if as_of is not None else last.normalize() + pd.Timedelta(days=1)
        report = {"tables": {t: r.report() for t, r in results.items()}, "observed_until": observed_until.isoformat()}
        (folder / "quarantine").mkdir()
        for table, result in results.items():
            quarantine = result.quarantine_file()
            if len(quarantine):
                quarantine.astype({col: str for col in quarantine.columns if col != c.QUARANTINE_ROW}).to_parquet(
                    folder / "quarantine" / f"{table}.parquet", index=False
                )
        extra = {"source": "ingest", "timezone": timezone, "buckets": buckets}
        write_metadata(folder, observed_until, currency, extra=extra)
        (folder / "ingest_report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


def _ingest_file(
    writer: BucketWriter,
    path: Path,
    mapping: TableMapping,
    as_of: pd.Timestamp | None,
    timezone: str,
    chunk_rows: int,
) -> TableResult:
    """One source file through validation into `writer`, a chunk at a time (line items whole)."""
    table = writer.table
    line_items = table == "orders" and mapping.grain == "line"
    chunks = [read_source(path, mapping)] if line_items else read_chunks(path, mapping, chunk_rows)
    result, seen = TableResult(table), SeenKeys()
    for raw in chunks:
        if table == "orders":
            orders = orders_result(raw, mapping, path.name, as_of, timezone, seen)
            rows, quarantine, counts, set_aside = orders.rows, orders.quarantine, orders.counts, orders.set_aside
        else:
            rows, quarantine = canonicalize(raw, table, mapping, path.name, as_of, timezone, seen=seen)
            counts, set_aside = None, None
        writer.write_frame(rows)
        result.add(quarantine, len(raw), rows, counts, set_aside)
    if table == "orders" and result.rows_read == 0:
        raise RetainError(f"The orders file {path} has no rows; there is nothing to ingest.")
    return result


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
