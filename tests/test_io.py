"""lemmse._io: a file is written completely or not at all."""

import pytest

from lemmse._io import atomic_path, write_text_atomic


def test_atomic_path_replaces_on_success(tmp_path):
    dest = tmp_path / "sub" / "out.txt"
    with atomic_path(dest) as tmp:
        assert tmp.parent == dest.parent and tmp.name.startswith(".out.txt.")
        tmp.write_text("new")
        assert not dest.exists()  # nothing at the destination before the block ends
    assert dest.read_text() == "new"
    assert sorted(p.name for p in dest.parent.iterdir()) == ["out.txt"]


def test_atomic_path_keeps_the_old_file_on_failure(tmp_path):
    dest = tmp_path / "out.txt"
    write_text_atomic(dest, "old")
    for error in (RuntimeError("disk full"), KeyboardInterrupt()):
        with pytest.raises(type(error)):
            with atomic_path(dest) as tmp:
                tmp.write_text("half")
                raise error
        assert dest.read_text() == "old"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_write_text_atomic_keeps_newlines(tmp_path):
    dest = write_text_atomic(tmp_path / "a.csv", "a,b\r\n1,2\n")
    assert dest.read_bytes() == b"a,b\r\n1,2\n"
