"""Random bytes and random label maps: the loaders either load or raise InputError, never anything else."""
import csv
import io
import json
import os
import tempfile

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from config import InputError
from dataset import iter_predict_file, load_label_map, load_labelled_file

NAMES = ["anger", "joy", "sadness"]
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Cells drawn from what breaks CSV readers: quotes, separators, line ends, control and format characters.
piece = st.sampled_from(list('ab ,"\r\n\t\x00\x07\u200d\u00e9\U0001F600') + NAMES + ["1", "-1", "1.5"])
cell = st.lists(piece, max_size=6).map("".join)
label = st.sampled_from(NAMES + ["0", "1", "2", "3", "-1", "1.5", "", " joy ", "Joy", "joy,anger", "1e3"])
csv_bytes = st.one_of(
    st.binary(max_size=300),
    st.lists(st.lists(cell, min_size=0, max_size=4), max_size=8).map(
        lambda rows: ("sentences,emotion\n" + "\n".join(",".join(r) for r in rows)).encode("utf-8")),
    st.lists(st.tuples(cell, label), max_size=8).map(lambda rows: _csv(rows)),
    st.lists(st.tuples(st.text(alphabet='ab ,"\n\u200d\u00e9', max_size=8), st.sampled_from(NAMES + ["0", "2"])),
             min_size=1, max_size=8).map(lambda rows: _csv(rows)),  # mostly valid files
    st.text(max_size=200).flatmap(lambda t: st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "latin-1"]).map(
        lambda enc: t.encode(enc, errors="replace"))),
)
json_value = st.recursive(st.none() | st.booleans() | st.integers(-3, 5) | st.floats() | st.text(max_size=5),
                          lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                       max_size=3), max_leaves=8)
label_map_bytes = st.one_of(
    st.binary(max_size=100),
    json_value.map(lambda v: json.dumps(v).encode()),
    st.lists(st.sampled_from(NAMES + ["x", "0", "1"]), min_size=1, max_size=5, unique=True).map(
        lambda names: json.dumps({n: i for i, n in enumerate(names)}).encode()),
    st.lists(st.tuples(st.sampled_from(NAMES + ["", " ", "0", "1", "x"]), json_value), max_size=5).map(
        lambda pairs: ("{" + ",".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in pairs) + "}").encode()),
)


def _csv(rows) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["sentences", "emotion"])
    writer.writerows(rows)
    return out.getvalue().encode("utf-8")


def _file(content: bytes, suffix: str) -> str:
    fd, path = tempfile.mkstemp(suffix=suffix)
    with os.fdopen(fd, "wb") as f:
        f.write(content)
    return path


@SETTINGS
@given(label_map_bytes)
@example(b'{"a": 0, "a": 1}')
@example(b"[[[[[[[[[[]]]]]]]]]]")
@example(b'{"a": NaN, "b": 1}')
@example(b"[" * 100_000 + b"]" * 100_000)  # deeper than the JSON parser's recursion limit
@example(b'{"a": ' + b"1" * 5000 + b', "b": 1}')  # more digits than int() accepts
@example(b"\xff\xfe{\x00}\x00")
def test_label_map_loads_or_says_why(content):
    path = _file(content, ".json")
    try:
        names = load_label_map(path)
    except InputError as e:
        assert path in str(e)
    else:
        assert len(names) >= 2 and len(set(names)) == len(names)
        assert json.loads(content) == {n: i for i, n in enumerate(names)}
    finally:
        os.remove(path)


@SETTINGS
@given(csv_bytes, st.booleans())
@example(b'sentences,emotion\n"unterminated,joy\n', False)
@example(b"sentences,emotion\na\x00b,joy\n", False)
@example(b"sentences,emotion\r\nhi,joy\r\n", False)
def test_labelled_csv_loads_or_says_why(content, multi_label):
    path = _file(content, ".csv")
    try:
        data = load_labelled_file(path, "sentences", "emotion", NAMES, multi_label)
    except InputError as e:
        assert path in str(e)
    else:
        assert len(data.texts) == len(data.labels) == len(data.rows) > 0
        assert all(t.strip() for t in data.texts)
        assert all(isinstance(x, list) if multi_label else 0 <= x < len(NAMES) for x in data.labels)
    finally:
        os.remove(path)


@SETTINGS
@given(csv_bytes, st.sampled_from([".csv", ".txt"]), st.integers(1, 4))
def test_predict_file_streams_or_says_why(content, suffix, chunk_rows):
    path = _file(content, suffix)
    try:
        chunks = list(iter_predict_file(path, "sentences", chunk_rows))
    except InputError as e:
        assert path in str(e)
    else:
        rows = [r for chunk_rows_, _, _ in chunks for r in chunk_rows_]
        assert rows == sorted(rows) and len(set(rows)) == len(rows)  # input order, each row once
        assert all(0 < len(texts) <= chunk_rows and texts2 is None for _, texts, texts2 in chunks)
    finally:
        os.remove(path)
