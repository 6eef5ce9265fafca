"""The file formats of labelled and prediction data: .csv, .tsv, .jsonl and .parquet, chosen by extension.

Every reader yields the same thing, `(number, record, problem)`: `number` is the place in the file the way its
format counts (`unit(path)` names it: the row of a CSV or TSV, whose header is row 1; the line of a JSON-lines
file; the row of the data of a Parquet file, which has no header row), `record` maps each asked-for column to its
text, and `problem` says why a row could not be read (then `record` is None). So every check in dataset.py gives
its file/row/column message in every format. Text formats are streamed line by line, Parquet in record batches,
so a prediction file of any size is read in bounded memory.

Writers take rows of [text(s)..., label, probabilities...] and write them to a path that the caller renames into
place (checkpoint.atomic_path), so a predictions file is never half-written.
"""
import csv
import io
import json
import os
import sys

from config import InputError

TABLE_FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".parquet": "parquet"}
PARQUET_BATCH_ROWS = 4096
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # a long paragraph in one cell is legitimate text


def table_format(path: str):
    """'csv', 'tsv', 'jsonl' or 'parquet' from the file's extension; None for anything else."""
    return TABLE_FORMATS.get(os.path.splitext(path)[1].lower())


def unit(path: str) -> str:
    """What a reader's numbers count in this file: 'line' for JSON lines, 'row' otherwise."""
    return "line" if table_format(path) == "jsonl" else "row"


def _missing(path: str, where: str, columns: list, required: tuple, noun: str = "column") -> None:
    for col, flag in required:
        if col not in columns:
            raise InputError(f"{path}{', ' + where if where else ''}: no {noun} '{col}' "
                             f"({noun}s: {', '.join(columns) or 'none'}); name it with {flag}")


def decoded_lines(path: str, lines, word: str = "line"):
    """Text lines from text (passed through) or from the byte lines of a file opened in binary mode, each decoded
    on its own so that a bad byte is named on its own line (a text-mode file decodes 8 KB ahead of the line read);
    `word` is what the message calls a line."""
    for number, line in enumerate(lines, start=1):
        if isinstance(line, bytes):
            try:
                line = line.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as e:
                guess = " (it looks like Latin-1 or Windows-1252)" if line[e.start] >= 0x80 else ""
                raise InputError(f"{path}, {word} {number}: not UTF-8 text, byte 0x{line[e.start:e.start + 1].hex()}"
                                 f"{guess}; save it as UTF-8")
        yield line


def _delimited(path: str, lines, required: tuple, fmt: str):
    """CSV or TSV (quoted as CSV, tab-separated) from an iterable of text lines."""
    reader = csv.reader(decoded_lines(path, lines), delimiter="\t" if fmt == "tsv" else ",", strict=True)
    kind = fmt.upper()
    try:
        header = next(reader)
    except StopIteration:
        raise InputError(f"{path}: the file is empty")
    except csv.Error as e:
        raise InputError(f"{path}, row 1: malformed {kind} header ({e})")
    header = [h.strip() for h in header]
    _unique(path, "row 1", header)
    _missing(path, "row 1", header, required)
    cols = [header.index(col) for col, _ in required]
    row = 1
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as e:  # a quote left open swallows the rest of the file: name the row it opened on
            raise InputError(f"{path}, row {row + 1} (line {reader.line_num}): malformed {kind} ({e})")
        row += 1
        if not fields or (len(fields) == 1 and not fields[0].strip() and len(header) > 1):
            continue  # blank line
        if len(fields) != len(header):
            yield row, None, f"{len(fields)} fields where the header has {len(header)}"
            continue
        yield row, {col: fields[c] for (col, _), c in zip(required, cols)}, None


def _json_text(value, text_only: bool = False):
    """A JSON value as the text of a cell: strings as they are, None (null) as a blank; unless `text_only` (a text
    column), integers (label ids) and lists (several labels) as CSV would hold them. Anything else raises
    ValueError."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    def label_id(v):
        return isinstance(v, int) and not isinstance(v, bool)
    if label_id(value) and not text_only:
        return str(value)
    if isinstance(value, list) and not text_only and all(isinstance(v, str) or label_id(v) for v in value):
        return ",".join(str(v) for v in value)
    raise ValueError(f"holds {type(value).__name__} {json.dumps(value)[:40]}, expected text")


def _unique(path: str, where: str, names: list, noun: str = "column name") -> None:
    """A name given twice (a header, a Parquet schema, an object's keys) leaves which one is meant open: refused."""
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InputError(f"{path}{', ' if where else ''}{where}: duplicated {noun}(s) {', '.join(map(repr, dupes))}")


def _jsonl(path: str, lines, required: tuple, text_cols: tuple):
    """JSON lines: one object a line; blank lines are skipped."""
    for number, line in enumerate(decoded_lines(path, lines), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as e:
            yield number, None, f"not valid JSON ({e})"
            continue
        except RecursionError:
            yield number, None, "not valid JSON (nested too deeply)"
            continue
        if not isinstance(obj, dict):
            yield number, None, f"a JSON {type(obj).__name__}, expected an object such as {{\"text\": ...}}"
            continue
        if any(line.count(f'"{col}"') > 1 for col, _ in required):  # json.loads keeps the last of repeated keys
            _unique(path, f"line {number}", [k for k, _ in json.loads(line, object_pairs_hook=list)], "key")
        _missing(path, f"line {number}", list(obj), required, noun="key")
        record, problem = {}, None
        for col, _ in required:
            try:
                record[col] = _json_text(obj[col], text_only=col in text_cols)
            except ValueError as e:
                problem = f"key '{col}' {e}"
                break
        yield (number, None, problem) if problem else (number, record, None)


def _parquet_file(path: str):
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow)")
    try:
        return pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid, OSError and others for a file that is not Parquet
        raise InputError(f"{path}: not a readable Parquet file ({str(e).splitlines()[0]})")


def _check_parquet_type(path: str, col: str, kind, text_only: bool) -> None:
    """Text columns (`text_only`) must hold strings; a label column may also hold integer ids or lists of names or
    ids."""
    import pyarrow.types as pt

    def textual(t):
        return pt.is_string(t) or pt.is_large_string(t) or pt.is_null(t) or (pt.is_integer(t) and not text_only)
    listed = not text_only and (pt.is_list(kind) or pt.is_large_list(kind)) and textual(kind.value_type)
    if not (textual(kind) or listed):
        raise InputError(f"{path}, column '{col}': holds {kind}, expected text (strings)")


def _parquet(path: str, required: tuple, text_cols: tuple):
    pf = _parquet_file(path)
    schema = pf.schema_arrow
    _missing(path, "", schema.names, required)
    names = [col for col, _ in required]
    _unique(path, "", [n for n in schema.names if n in names])  # other columns are never read
    for col, _ in required:
        _check_parquet_type(path, col, schema.field(col).type, col in text_cols)
    row = 0
    try:
        for batch in pf.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=names):
            columns = [batch.column(name).to_pylist() for name in names]
            for values in zip(*columns):
                row += 1
                yield row, *_parquet_record(names, values)
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError, ArrowIOError an OSError
        raise InputError(f"{path}, after row {row}: unreadable Parquet data ({str(e).splitlines()[0]})")


def _parquet_record(names: list, values: tuple) -> tuple:
    """(record, None), or (None, the problem naming its column)."""
    record = {}
    for name, value in zip(names, values):
        try:
            record[name] = _json_text(value)
        except ValueError as e:
            return None, f"column '{name}' {e}"
    return record, None


def iter_records(path: str, required: tuple, text: str = None, text_cols: tuple = (), stream=None):
    """Yield (number, {column: text}, problem) for the columns of `required` ((column, flag) pairs) of a table.

    Text formats are read from `text` (training decodes whole files first, to name the byte of a bad encoding)
    or from `stream`, a file opened in binary mode (prediction). `text_cols` are the columns that must hold text
    (a label column may also hold ids or lists, in JSON lines and Parquet).
    """
    fmt = table_format(path)
    if fmt == "parquet":
        yield from _parquet(path, required, text_cols)
        return
    if fmt is None:
        raise InputError(f"{path}: unknown file type; use .csv, .tsv, .jsonl or .parquet")
    lines = io.StringIO(text, newline="") if text is not None else stream
    yield from _jsonl(path, lines, required, text_cols) if fmt == "jsonl" else _delimited(path, lines, required, fmt)


def table_columns(path: str) -> list:
    """The column names of a table file (the keys of a JSON-lines file's first object); [] if unreadable."""
    fmt = table_format(path)
    try:
        if fmt == "parquet":
            return list(_parquet_file(path).schema_arrow.names)
        with open(path, encoding="utf-8-sig", newline="") as f:
            if fmt == "jsonl":
                first = next((line for line in f if line.strip()), "{}")
                obj = json.loads(first)
                return list(obj) if isinstance(obj, dict) else []
            if fmt in ("csv", "tsv"):
                return [h.strip() for h in next(csv.reader(f, delimiter="\t" if fmt == "tsv" else ","), [])]
    except (OSError, UnicodeDecodeError, csv.Error, ValueError, InputError):
        return []
    return []


class PredictionWriter:
    """Rows of predictions into `path` as CSV, JSON lines or Parquet; used as a context manager. A file with no rows
    is never kept: predict.py refuses such an input inside the context, and the caller's temporary file goes."""

    def __init__(self, path: str, fmt: str, columns: list):
        self.fmt, self.columns = fmt, columns
        self.path, self.file, self.parquet = path, None, None
        if fmt in ("csv", "jsonl"):
            self.file = open(path, "w", encoding="utf-8", newline="")
            if fmt == "csv":
                self.csv = csv.writer(self.file)
                self.csv.writerow(columns)

    def write(self, cells: list, probs) -> None:
        """cells: one list of strings per text and label column, in `columns` order; probs: (rows, classes)."""
        rows = len(probs)
        if self.fmt == "csv":
            for i in range(rows):
                self.csv.writerow([*(c[i] for c in cells), *(f"{x:.6f}" for x in probs[i])])
        elif self.fmt == "jsonl":
            for i in range(rows):
                values = [*(c[i] for c in cells), *(round(float(x), 6) for x in probs[i])]
                self.file.write(json.dumps(dict(zip(self.columns, values)), ensure_ascii=False) + "\n")
        else:
            self._write_parquet(cells, probs)

    def _write_parquet(self, cells: list, probs) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq
        arrays = [pa.array(c, pa.string()) for c in cells]
        arrays += [pa.array(probs[:, j].astype("float64")) for j in range(probs.shape[1])]
        table = pa.Table.from_arrays(arrays, names=self.columns)
        if self.parquet is None:
            self.parquet = pq.ParquetWriter(self.path, table.schema)
        self.parquet.write_table(table)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        if self.parquet is not None:
            self.parquet.close()
        if self.file is not None:
            self.file.close()
