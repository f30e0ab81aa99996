"""Atomic writers: a killed writer leaves no artifact, and its temporary file is cleaned up."""

from __future__ import annotations

from qaclims.atomic import atomic_dir, atomic_path


def test_a_write_removes_the_temporary_file_a_killed_writer_left(tmp_path):
    target = tmp_path / "manifest.parquet"
    stale = tmp_path / ".manifest.parquet.abcd1234.tmp.parquet"
    stale.write_bytes(b"half")
    unrelated = tmp_path / ".manifest.parquet.old.abcd1234.tmp.parquet"
    unrelated.write_bytes(b"another artifact's")
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"done")
    assert target.read_bytes() == b"done"
    assert not stale.exists() and unrelated.exists()
    stale_dir = tmp_path / ".shard-0.abcd1234.tmp"
    stale_dir.mkdir()
    with atomic_dir(tmp_path / "shard-0") as folder:
        (folder / "a.png").write_bytes(b"x")
    assert not stale_dir.exists() and (tmp_path / "shard-0" / "a.png").is_file()
