"""The two ways retain writes: a file and a folder, each whole or not at all."""

import stat

import pytest

from retain import files


def test_a_file_is_replaced_whole_with_its_mode_or_left_as_it_was(tmp_path):
    path = tmp_path / "current.txt"
    path.write_text("old\n")
    files.write_file(path, lambda tmp: tmp.write_text("new\n"), mode=0o640)
    assert path.read_text() == "new\n" and stat.S_IMODE(path.stat().st_mode) == 0o640

    def crash(tmp):
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        files.write_file(path, crash)
    assert path.read_text() == "new\n"  # the old file, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["current.txt"]  # no temporary file left


def test_a_staging_folder_vanishes_whatever_happens_and_is_moved_into_place_whole(tmp_path):
    out = tmp_path / "2025-12-31"
    with files.staging_folder(out) as staged:
        (staged / "a.csv").write_text("a\n")
        files.fsync_tree(staged)
        files.replace_folder(staged, out)
    assert (out / "a.csv").read_text() == "a\n"
    with pytest.raises(RuntimeError), files.staging_folder(out) as staged:
        (staged / "b.csv").write_text("b\n")
        raise RuntimeError("a bug while writing")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["2025-12-31"]  # the staged folder is gone
    assert sorted(p.name for p in out.iterdir()) == ["a.csv"]  # the folder in place is untouched
