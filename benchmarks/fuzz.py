"""Fuzz the file parsers with hypothesis for a given time: CSV and Parquet tables, ``.npz`` archives (through
``data.load_dataset``) and answer files (``flows.queue_io.read_answers``: CSV and Label Studio JSON, then recorded
in a real label store).

    python benchmarks/fuzz.py --minutes 5

Each input either parses, or is refused with the documented error (``DatasetError`` for datasets,
``ImportFileError`` for answer files) whose message is one line naming the file. Anything else — another exception,
a message over several lines or without the file's name — is a failure, kept with hypothesis's shrunk input.
Prints the counts per parser and writes ``benchmarks/results/fuzz.json``.
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from _common import ROOT, environment
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from data import DatasetError, load_dataset
from data.store import LabelStore
from flows.queue_io import ImportFileError, import_answers, read_answers

CLASSES = ["cat", "dog", "7"]
CELLS = st.one_of(
    st.sampled_from(
        ["", "nan", "NaN", "inf", "-inf", "1e309", "-1", "0", "1", "2", "cat", "dog", "7", "train", "test"]
    ),
    st.sampled_from(['"', '""', ",", "\n", "\r\n", "\x00", "é", "\ufeff", "label", "id", "split"]),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-(2**70), 2**70).map(str),
    st.text(max_size=8),
)
COLUMNS = st.lists(
    st.one_of(st.sampled_from(["label", "id", "split", "x0", "x1", "x2"]), st.text(max_size=4)), min_size=1, max_size=6
)


@dataclass
class Counts:
    """What one parser did with its inputs: parsed, refused with the documented error, or failed."""

    examples: int = 0
    parsed: int = 0
    refused: int = 0
    failures: list[dict] = field(default_factory=list)
    seconds: float = 0.0


def _clear(error: Exception, path: Path) -> bool:
    """The documented kind of message: one line that names the file."""
    text = str(error)
    return "\n" not in text.strip() and (path.name in text)


class Target:
    """One parser under fuzz: ``run(data)`` writes an input file from hypothesis's data and parses it."""

    def __init__(self, name: str, strategy: st.SearchStrategy, write: Callable, parse: Callable, refusal: type):
        self.name, self.strategy, self.write, self.parse, self.refusal = name, strategy, write, parse, refusal
        self.counts = Counts()

    def check(self, value, directory: Path) -> None:
        self.counts.examples += 1
        path = self.write(value, directory)
        try:
            self.parse(path)
        except self.refusal as error:
            if not _clear(error, path):
                raise AssertionError(f"unclear message: {str(error)!r}") from error
            self.counts.refused += 1
            return
        self.counts.parsed += 1


# ---------------------------------------------------------------------------------------------- CSV tables


def _csv_text(draw_columns, rows, raw) -> str:
    if raw is not None:
        return raw
    buffer = io.StringIO()
    buffer.write(",".join(draw_columns) + "\n")
    for row in rows:
        buffer.write(",".join(row) + "\n")
    return buffer.getvalue()


NUMBER = st.one_of(st.floats(-1e6, 1e6).map(repr), st.integers(-5, 5).map(str))
LABEL = st.sampled_from(["cat", "dog", "7", "0", "1", "2", "-1", ""])


@st.composite
def plausible_tables(draw) -> dict[str, list]:
    """A table that is nearly right: numeric features, a label column, sometimes id and split, a few odd cells."""
    n = draw(st.integers(1, 10))
    columns = {f"x{j}": draw(st.lists(NUMBER, min_size=n, max_size=n)) for j in range(draw(st.integers(1, 3)))}
    columns["label"] = draw(st.lists(LABEL, min_size=n, max_size=n))
    if draw(st.booleans()):
        columns["split"] = draw(
            st.lists(st.sampled_from(["train", "test", "test", "TEST", ""]), min_size=n, max_size=n)
        )
    if draw(st.booleans()):
        columns["id"] = draw(st.lists(st.sampled_from(["a", "b", "c", "d", "", "a b"]), min_size=n, max_size=n))
    for _ in range(draw(st.integers(0, 2))):  # odd cells
        column = draw(st.sampled_from(sorted(columns)))
        columns[column][draw(st.integers(0, n - 1))] = draw(CELLS)
    return columns


def _table_csv(columns: dict[str, list]) -> str:
    names = list(columns)
    rows = [
        [str(columns[c][i]).replace(",", ";").replace("\n", " ") for c in names] for i in range(len(columns[names[0]]))
    ]
    return _csv_text(names, [[f'"{cell}"' if '"' not in cell else cell for cell in row] for row in rows], None)


CSV = st.one_of(
    st.builds(
        _csv_text,
        COLUMNS,
        st.lists(st.lists(CELLS, min_size=0, max_size=7), max_size=12),
        st.one_of(st.none(), st.none(), st.text(max_size=200)),
    ),
    plausible_tables().map(_table_csv),
    plausible_tables().map(_table_csv),
)


def _write_text(suffix: str) -> Callable:
    def write(text: str, directory: Path) -> Path:
        path = directory / f"fuzz{suffix}"
        path.write_bytes(text.encode("utf-8", "surrogatepass"))
        return path

    return write


def _parse_table(path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        load_dataset(path, label_column="label", id_column="id" if path.stem.endswith("-id") else None)


# ---------------------------------------------------------------------------------------------- Parquet tables

PARQUET_COLUMN = st.one_of(
    st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=0, max_size=10),
    st.lists(st.integers(-(2**63), 2**63 - 1), min_size=0, max_size=10),
    st.lists(st.one_of(st.none(), st.text(max_size=5)), min_size=0, max_size=10),
    st.lists(st.booleans(), min_size=0, max_size=10),
    st.lists(st.lists(st.integers(0, 3), max_size=2), min_size=0, max_size=10),
)


def _typed(columns: dict[str, list]) -> dict[str, list]:
    """A plausible table with numbers as numbers (Parquet keeps types)."""
    typed = {}
    for name, values in columns.items():
        try:
            typed[name] = [float(v) for v in values] if name.startswith("x") else values
        except ValueError:
            typed[name] = values
    return typed


@st.composite
def parquet_frames(draw) -> tuple[dict, int | None]:
    if draw(st.booleans()):
        return _typed(draw(plausible_tables())), draw(st.one_of(st.none(), st.none(), st.none(), st.integers(0, 4000)))
    names = draw(st.lists(st.sampled_from(["label", "id", "split", "x0", "x1", "x2", "z"]), min_size=1, unique=True))
    columns = {name: draw(PARQUET_COLUMN) for name in names}
    if draw(st.booleans()):  # most frames have columns of one length
        n = draw(st.integers(0, 8))
        columns = {k: (v * (n // max(len(v), 1) + 1))[:n] if v else [None] * n for k, v in columns.items()}
    cut = draw(st.one_of(st.none(), st.integers(0, 4000)))  # a file cut short (a truncated copy)
    return columns, cut


def _write_parquet(value, directory: Path) -> Path:
    columns, cut = value
    path = directory / "fuzz.parquet"
    try:
        frame = pd.DataFrame(columns)
        buffer = io.BytesIO()
        frame.to_parquet(buffer)
        data = buffer.getvalue()
    except (ValueError, TypeError, ArithmeticError, Exception):  # a frame pandas or pyarrow cannot write
        data = json.dumps({k: str(v) for k, v in columns.items()}).encode()
    path.write_bytes(data[:cut] if cut is not None else data)
    return path


# ---------------------------------------------------------------------------------------------- .npz archives

NPZ_ARRAY = st.one_of(
    hnp.arrays(
        st.sampled_from([np.float32, np.float64, np.float16, np.int64, np.uint8, np.int8, np.bool_]),
        hnp.array_shapes(min_dims=0, max_dims=4, max_side=5),
        elements=None,
    ),
    hnp.arrays(hnp.unicode_string_dtypes(max_len=4), hnp.array_shapes(min_dims=0, max_dims=2, max_side=6)),
    st.lists(st.one_of(st.integers(), st.text(max_size=3), st.none()), max_size=5).map(
        lambda v: np.array(v, dtype=object)
    ),
)


@st.composite
def npz_archives(draw) -> tuple[dict, int | None]:
    keys = draw(
        st.lists(
            st.one_of(
                st.sampled_from(["x_train", "y_train", "x_test", "y_test", "ids_train", "ids_test", "classes"]),
                st.text("abcxy_", min_size=1, max_size=6),
            ),
            max_size=7,
            unique=True,
        )
    )
    arrays = {key: draw(NPZ_ARRAY) for key in keys}
    if draw(st.booleans()):  # a plausible core, so the deeper checks run too
        n, m, d = draw(st.integers(0, 6)), draw(st.integers(0, 4)), draw(st.integers(1, 3))
        arrays.setdefault("x_train", np.asarray(draw(hnp.arrays(np.float64, (n, d))), dtype=np.float64))
        arrays.setdefault("x_test", np.asarray(draw(hnp.arrays(np.float64, (m, d)))))
        arrays.setdefault("y_test", np.asarray(draw(hnp.arrays(np.int64, (m,), elements=st.integers(-2, 3)))))
    cut = draw(st.one_of(st.none(), st.none(), st.integers(0, 3000)))
    return arrays, cut


def _write_npz(value, directory: Path) -> Path:
    arrays, cut = value
    path = directory / "fuzz.npz"
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    data = buffer.getvalue()
    path.write_bytes(data[:cut] if cut is not None else data)
    return path


def _parse_npz(path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        load_dataset(path)


# ---------------------------------------------------------------------------------------------- answer files

JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=6)),
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=20,
)


@st.composite
def label_studio_exports(draw) -> str:
    def task():
        annotation = {
            "completed_by": draw(
                st.one_of(st.integers(0, 5), st.fixed_dictionaries({"email": st.text(max_size=5)}), JSON_VALUES)
            ),
            "was_cancelled": draw(st.one_of(st.booleans(), JSON_VALUES)),
            "result": draw(
                st.one_of(
                    st.lists(
                        st.fixed_dictionaries(
                            {
                                "type": st.sampled_from(["choices", "labels", ""]),
                                "value": st.one_of(
                                    st.fixed_dictionaries(
                                        {
                                            "choices": st.lists(
                                                st.one_of(st.sampled_from(CLASSES), JSON_VALUES), max_size=3
                                            )
                                        }
                                    ),
                                    JSON_VALUES,
                                ),
                            }
                        ),
                        max_size=3,
                    ),
                    JSON_VALUES,
                )
            ),
        }
        return {
            "id": draw(st.one_of(st.integers(), JSON_VALUES)),
            "data": draw(
                st.one_of(
                    st.fixed_dictionaries({"item_id": st.one_of(st.sampled_from(["a", "b", "c"]), JSON_VALUES)}),
                    JSON_VALUES,
                )
            ),
            "annotations": draw(st.one_of(st.lists(st.just(annotation), max_size=2), JSON_VALUES)),
        }

    tasks = [task() for _ in range(draw(st.integers(0, 4)))]
    value = draw(st.one_of(st.just(tasks), st.just(tasks), JSON_VALUES))
    text = json.dumps(value)
    return text if draw(st.booleans()) else text[: draw(st.integers(0, len(text)))]


ANSWER_CSV = st.builds(
    _csv_text,
    st.lists(st.sampled_from(["item_id", "label", "annotator", "x", ""]), min_size=1, max_size=4),
    st.lists(
        st.lists(
            st.one_of(st.sampled_from(["a", "b", "c", "cat", "dog", "7", "0", "2", "3", "-1", ""]), CELLS), max_size=4
        ),
        max_size=8,
    ),
    st.one_of(st.none(), st.none(), st.text(max_size=100)),
)


def _answer_parser(directory: Path) -> Callable[[Path], None]:
    store = LabelStore(f"sqlite:///{directory / 'labels.db'}")
    store.create_campaign("fuzz", "fuzz", CLASSES)
    store.add_items("fuzz", ["a", "b", "c"], ["pool"] * 3, [0, 1, 2])

    def parse(path: Path) -> None:
        rows = read_answers(path, CLASSES, None, "fuzzer")
        outcomes = import_answers(store, "fuzz", rows)
        if len(outcomes) != len(rows):
            raise AssertionError(f"{len(rows)} rows but {len(outcomes)} outcomes")

    return parse


@st.composite
def answer_files(draw) -> tuple[str, str]:
    if draw(st.booleans()):
        return ".json", draw(label_studio_exports())
    return ".csv", draw(ANSWER_CSV)


def _write_answers(value, directory: Path) -> Path:
    suffix, text = value
    return _write_text(suffix)(text, directory)


# ---------------------------------------------------------------------------------------------- driver


def targets(directory: Path) -> list[Target]:
    return [
        Target("csv", CSV, _write_text(".csv"), _parse_table, DatasetError),
        Target("parquet", parquet_frames(), _write_parquet, _parse_table, DatasetError),
        Target("npz", npz_archives(), _write_npz, _parse_npz, DatasetError),
        Target("label_import", answer_files(), _write_answers, _answer_parser(directory), ImportFileError),
    ]


def fuzz(target: Target, directory: Path, seconds: float, batch: int) -> None:
    """Run hypothesis batches on ``target`` for ``seconds``; a failure is shrunk, kept, and fuzzing goes on."""
    deadline = time.monotonic() + seconds
    started = time.monotonic()
    while time.monotonic() < deadline:

        @settings(
            max_examples=batch,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
            derandomize=False,
        )
        @given(target.strategy)
        def run(value) -> None:
            target.check(value, directory)

        try:
            run()
        except Exception as error:  # a failure hypothesis has shrunk: keep it, with its input
            target.counts.failures.append(
                {
                    "error": f"{type(error).__name__}: {error}"[:2000],
                    "traceback": traceback.format_exc()[-3000:],
                }
            )
            if len(target.counts.failures) >= 20:
                break
    target.counts.seconds = time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="total fuzzing time, shared by the parsers")
    parser.add_argument("--batch", type=int, default=200, help="hypothesis examples per batch")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "fuzz.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        all_targets = targets(directory)
        share = args.minutes * 60 / len(all_targets)
        for target in all_targets:
            fuzz(target, directory, share, args.batch)
            c = target.counts
            print(
                f"{target.name:13s} {c.examples:7d} inputs  {c.parsed:6d} parsed  {c.refused:6d} refused  "
                f"{len(c.failures):3d} failures  {c.seconds:6.0f} s",
                flush=True,
            )
    result = {
        "minutes": args.minutes,
        "targets": {t.name: asdict(t.counts) for t in all_targets},
        "failures": sum(len(t.counts.failures) for t in all_targets),
        "environment": environment("cpu"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 1 if result["failures"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
