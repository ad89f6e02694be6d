"""Ingest: read a shop's files (CSV or Parquet), map them to the contract, validate every row, and
write a canonical dataset. A bad row is never dropped silently: it goes to `quarantine/<table>.parquet`
with its original text, a reason code and its line number, and `ingest_report.json` counts them.
"""

from __future__ import annotations

import gzip
import io
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from retain import contract as c
from retain import order_lines as lines
from retain.config import DEFAULT_BUCKETS, DEFAULT_TIMEZONE
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
    if path.name.lower().endswith(".gz"):  # orders.csv.gz, as shops and warehouses export them
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise RetainError(f"{path} ends in .gz but does not decompress ({exc}); is it a gzip file?") from None
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
    text: pd.DataFrame | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Turn a source frame of text into (canonical rows, quarantined rows with `_reason`).

    `raw` has the source's columns as text plus `_source_row`. The canonical frame has the table's
    contract columns with their types; the quarantine frame keeps the original text of each bad row.
    `text`: `raw` already renamed to canonical columns (the orders path reads some values first).
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
    raw: pd.DataFrame, mapping: TableMapping, source_name: str, as_of: pd.Timestamp | None, timezone: str
) -> lines.OrderRows:
    """The orders file: guests and excluded rows counted and set apart, then each row an order (`grain =
    "order"`) or the lines grouped into orders with their cancellations matched (`"line"`); see
    `retain.order_lines`."""
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
        "guest_revenue_share": round(float(sales[guest].sum() / sales.sum()) if sales.sum() > 0 else 0.0, 6),
        lines.EXCLUDED: int(excluded.sum()),
    }
    rest = ~guest & ~excluded
    if mapping.grain == "order":
        rows, quarantine = canonicalize(raw[rest], "orders", mapping, source_name, as_of, timezone, text[rest])
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


@dataclass(frozen=True)
class TableResult:
    table: str
    rows: pd.DataFrame
    quarantine: pd.DataFrame  # bad rows: counted against ingest.max_bad_share
    rows_read: int
    set_aside: pd.DataFrame | None = None  # kept in the quarantine file, not bad (unmatched cancellations)
    counts: dict = field(default_factory=dict)  # the orders' other kinds of row (retain.order_lines)

    def report(self) -> dict:
        reasons = self.quarantine[c.QUARANTINE_REASON].value_counts().sort_index()
        report = {
            "rows_read": self.rows_read,
            "rows_kept": self.counts.get("lines_kept", len(self.rows)),
            "rows_quarantined": len(self.quarantine),
            "quarantined_by_reason": {str(k): int(v) for k, v in reasons.items()},
        }
        if self.counts:  # the orders: every row read is kept, quarantined, or one of these
            report |= {key: value for key, value in self.counts.items() if key != "lines_kept"}
            report["orders_written"] = len(self.rows)
        return report

    def quarantine_file(self) -> pd.DataFrame:
        """What goes to quarantine/<table>.parquet: the bad rows, then the rows set aside."""
        parts = [self.quarantine] + ([self.set_aside] if self.set_aside is not None and len(self.set_aside) else [])
        return pd.concat(parts, ignore_index=True) if len(parts) > 1 else self.quarantine


def ingest(
    sources: dict[str, Path],
    out: Path,
    mapping_path: Path | None = None,
    as_of: pd.Timestamp | None = None,
    max_bad_share: float = 0.01,
    currency: str = "CNY",
    timezone: str = DEFAULT_TIMEZONE,
    buckets: int = DEFAULT_BUCKETS,
) -> dict:
    """Validate the source files and write the canonical dataset to `out` (each table in `buckets` member
    buckets), atomically.

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
        if table == "orders":
            orders = orders_result(raw, mapping, Path(path).name, as_of, timezone)
            results[table] = TableResult(
                table, orders.rows, orders.quarantine, len(raw), orders.set_aside, orders.counts
            )
        else:
            rows, quarantine = canonicalize(raw, table, mapping, Path(path).name, as_of, timezone)
            results[table] = TableResult(table, rows, quarantine, rows_read=len(raw))
    _reject_if_too_bad(results, max_bad_share)
    orders = results["orders"].rows
    observed_until = as_of if as_of is not None else orders[c.ORDERED_AT].max().normalize() + pd.Timedelta(days=1)
    report = {"tables": {t: r.report() for t, r in results.items()}, "observed_until": observed_until.isoformat()}
    with atomic_folder(Path(out)) as folder:
        (folder / "quarantine").mkdir()
        write_tables(folder, {table: result.rows for table, result in results.items()}, buckets)
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
