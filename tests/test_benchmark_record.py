"""The benchmarks' CSV appender: a header for a new or empty file, widened (old rows kept,
empty in the new columns) when rows bring columns the file lacks."""

from benchmarks._record import append_csv


def test_append_csv_writes_and_widens_the_header(tmp_path):
    path = tmp_path / "r.csv"
    append_csv(path, [{"a": 1}])
    append_csv(path, [{"a": 2}])
    assert path.read_text().splitlines() == ["a", "1", "2"]
    append_csv(path, [{"a": 3, "b": 4}])
    assert path.read_text().splitlines() == ["a,b", "1,", "2,", "3,4"]

    only_header = tmp_path / "h.csv"
    only_header.write_text("x\n")
    append_csv(only_header, [{"x": 1, "y": 2}])
    assert only_header.read_text().splitlines() == ["x,y", "1,2"]

    empty = tmp_path / "e.csv"
    empty.write_text("")
    append_csv(empty, [{"x": 1}])
    assert empty.read_text().splitlines() == ["x", "1"]
