"""The pure Parquet format helpers: value scales per sensor run, content checksums across
encodings, and dictionary-encoded names that every reader still sees as strings."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tiers import parquetformat as fmt


def _values(rng, kind: str, n: int) -> np.ndarray:
    if kind == "centi":
        return np.round(rng.uniform(10, 500, n), 2)
    if kind == "noise":
        return rng.uniform(0, 1, n)
    if kind == "around-zero":  # np.round gives -0.0 for small negatives
        return np.round(rng.uniform(-2, 2, n), 0)
    if kind == "mixed":
        return np.where(rng.uniform(size=n) < 0.5, np.round(rng.uniform(0, 9, n), 4), rng.uniform(size=n))
    special = np.array([0.0, -0.0, np.nan, np.inf, -np.inf, 1e300, 0.1, 2.0 ** 60, 1e8, 1.5, 123456.789])
    return rng.choice(special, n)


def min_scales(values: np.ndarray) -> np.ndarray:
    """The definition, value by value: the smallest scale s at which a value is exactly
    u / 10**s (|u| < 2**53, compared bit for bit, so -0.0 never is); MAX_SCALE + 1 if none."""
    result = np.full(len(values), fmt.MAX_SCALE + 1, dtype=np.int8)
    with np.errstate(invalid="ignore", over="ignore"):
        for i, v in enumerate(values.tolist()):
            for scale in range(fmt.MAX_SCALE + 1):
                unscaled = float(np.rint(v * 10.0 ** scale)) + 0.0
                back = np.float64(unscaled / 10.0 ** scale)
                if abs(unscaled) < 2 ** 53 and back.view(np.int64) == np.float64(v).view(np.int64):
                    result[i] = scale
                    break
    return result


@pytest.mark.parametrize("kind", ["centi", "noise", "around-zero", "mixed", "special"])
@pytest.mark.parametrize("runs", [1, 7, 500])
def test_run_scales_is_the_worst_scale_of_each_run(kind, runs):
    rng = np.random.default_rng(runs)
    values = _values(rng, kind, 20_000)
    starts = np.unique(np.concatenate([[0], rng.choice(np.arange(1, len(values)), runs - 1, replace=False)]))
    expected = np.maximum.reduceat(min_scales(values), starts)
    assert np.array_equal(fmt.run_scales(values, starts), expected)


def test_runs_of_one_resolution_each():
    values = np.concatenate([np.full(5, 3.0), np.full(5, 2.5), np.full(5, 0.125), np.full(5, -0.0)])
    scales = fmt.run_scales(values, np.array([0, 5, 10, 15]))
    assert scales.tolist() == [0, 1, 3, fmt.MAX_SCALE + 1]


def _names(values: list[str], dictionary: list[str] | None = None) -> pa.Array:
    if dictionary is None:
        return pa.array(values, pa.string())
    return pa.DictionaryArray.from_arrays(pa.array([dictionary.index(v) for v in values], pa.int32()),
                                          pa.array(dictionary, pa.string()))


def _table(machines: pa.Array | pa.ChunkedArray, values: list[float]) -> pa.Table:
    return pa.table({"machine": machines, "value": pa.array(values, pa.float64())})


def test_checksum_is_the_same_for_strings_and_dictionaries():
    rows = ["etch-02", "etch-01", "etch-02", "cvd-01"]
    values = [1.0, 2.0, 3.0, 4.0]
    plain = fmt.checksum(_table(_names(rows), values))
    assert fmt.checksum(_table(_names(rows, ["cvd-01", "etch-01", "etch-02"]), values)) == plain
    # a dictionary with repeated and unused entries, and chunks with different dictionaries
    assert fmt.checksum(_table(_names(rows, ["etch-02", "x", "etch-01", "cvd-01"]), values)) == plain
    chunked = pa.chunked_array([_names(rows[:2], ["etch-01", "etch-02"]), _names(rows[2:], ["cvd-01", "etch-02"])])
    assert fmt.checksum(_table(chunked, values)) == plain
    # and it still tells different content apart
    assert fmt.checksum(_table(_names(["etch-01", "etch-02", "etch-02", "cvd-01"]), values)) != plain
    assert fmt.checksum(_table(_names(rows, ["cvd-01", "etch-01", "etch-02"]), [1.0, 2.0, 3.0, 5.0])) != plain


def test_decimal_file_has_the_checksum_of_its_doubles():
    table = _table(_names(["a", "a", "b"], ["a", "b"]), [1.25, -3.5, 0.0])
    encoded = fmt.encode_values(table, "d2")
    assert pa.types.is_decimal(encoded.schema.field("value").type)
    assert fmt.checksum(encoded) == fmt.checksum(table)
    back = fmt.from_parquet_bytes(fmt.to_parquet_bytes(encoded), dictionaries=["machine"])
    assert fmt.checksum(back) == fmt.checksum(table)


def test_dictionary_names_are_plain_strings_to_readers():
    table = _table(_names(["b", "a", "b"], ["a", "b"]), [1.0, 2.0, 3.0])
    data = fmt.to_parquet_bytes(table)
    plain = pq.read_table(pa.BufferReader(data))
    assert plain.schema.field("machine").type == pa.string()
    assert plain.column("machine").to_pylist() == ["b", "a", "b"]
    read_as_dictionary = fmt.from_parquet_bytes(data, dictionaries=["machine"])
    assert pa.types.is_dictionary(read_as_dictionary.schema.field("machine").type)


def test_cast_keeps_dictionaries_and_casts_the_rest():
    schema = pa.schema([("machine", pa.string()), ("value", pa.float64())])
    table = pa.table({"value": pa.array([1, 2], pa.int64()), "machine": _names(["a", "b"], ["a", "b"])})
    cast = fmt.cast_keeping_dictionaries(table, schema)
    assert cast.column_names == ["machine", "value"]
    assert pa.types.is_dictionary(cast.schema.field("machine").type)
    assert cast.schema.field("value").type == pa.float64()
