"""files.py: path validation, no-follow reads/writes and safe tar handling (host side, no sandbox)."""

from __future__ import annotations

import io
import os
import stat
import tarfile

import pytest
from agentrl.sandboxes import UnsafePathError
from agentrl.sandboxes import files as F


@pytest.mark.parametrize(
    "raw, norm",
    [("main.py", "main.py"), ("./a//b/", "a/b"), ("src/pkg/__init__.py", "src/pkg/__init__.py"), ("a\\b", "a\\b")],
)
def test_validate_relpath_normalises(raw, norm):
    assert F.validate_relpath(raw) == norm


@pytest.mark.parametrize(
    "raw, words",
    [
        ("/etc/passwd", "absolute"),
        ("../x", "'..'"),
        ("a/../../b", "'..'"),
        ("a\x00b", "NUL"),
        ("", "work dir itself"),
        (".", "work dir itself"),
        (b"bytes", "must be a str"),
        ("/".join(["d"] * 100), "too long or too deep"),
    ],
)
def test_validate_relpath_rejects_with_a_reason(raw, words):
    with pytest.raises(UnsafePathError, match=words):
        F.validate_relpath(raw)
    assert F.validate_relpath(".", allow_root=True) == "."


def test_normalize_files_encodes_and_checks():
    assert F.normalize_files({"a.txt": "é", "b": b"\x00\xff"}) == {"a.txt": "é".encode(), "b": b"\x00\xff"}
    with pytest.raises(ValueError, match="given twice"):
        F.normalize_files({"a": "1", "./a": "2"})
    with pytest.raises(ValueError, match="as a file and as the directory"):
        F.normalize_files({"a": "1", "a/b": "2"})
    with pytest.raises(ValueError, match="over the cap of 4"):
        F.normalize_files({"a": "12345"}, max_file_bytes=4)
    with pytest.raises(ValueError, match="must be bytes or str"):
        F.normalize_files({"a": 3})
    with pytest.raises(UnsafePathError):
        F.normalize_files({"../a": "x"})


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "work"
    root.mkdir()
    (root / "a").mkdir()
    (root / "a" / "f.txt").write_bytes(b"inside")
    os.symlink("/etc/passwd", root / "out_abs")
    os.symlink("../../..", root / "a" / "up")
    os.symlink("a/f.txt", root / "in_rel")
    os.symlink("/work/a", root / "in_abs")  # absolute, but inside the work dir as the sandbox sees it
    os.symlink("loop2", root / "loop1")
    os.symlink("loop1", root / "loop2")
    os.mkfifo(root / "fifo")
    return root


def test_reads_follow_symlinks_only_inside_the_root(tree):
    assert F.read_in_root(tree, "in_rel") == b"inside"
    assert F.read_in_root(tree, "in_abs/f.txt") == b"inside"
    for path, words in [("out_abs", "outside the work dir"), ("a/up/etc/passwd", "outside the work dir"),
                        ("loop1", "too many levels"), ("fifo", "FIFO"), ("a", "directory")]:
        with pytest.raises(UnsafePathError, match=words):
            F.read_in_root(tree, path)
    with pytest.raises(FileNotFoundError):
        F.read_in_root(tree, "missing")
    with pytest.raises(ValueError, match="over max_bytes=3"):
        F.read_in_root(tree, "a/f.txt", max_bytes=3)


def test_writes_never_go_through_symlinks(tree, tmp_path):
    F.write_in_root(tree, "new/dir/x.txt", b"ok")
    assert (tree / "new" / "dir" / "x.txt").read_bytes() == b"ok"
    with pytest.raises(UnsafePathError, match="symlink"):
        F.write_in_root(tree, "out_abs", b"pwned")
    with pytest.raises(UnsafePathError, match="outside the work dir"):
        F.write_in_root(tree, "a/up/tmp/pwned", b"x")
    assert not (tmp_path.parent.parent / "tmp" / "pwned").exists()


def test_walk_lists_without_following(tree):
    kinds = dict(F.walk_in_root(tree))
    assert kinds["a"] == "dir" and kinds["a/f.txt"] == "file" and kinds["out_abs"] == "symlink"
    assert kinds["fifo"] == "other" and "a/up/etc" not in kinds


def _tar(members):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, kind, extra in members:
            info = tarfile.TarInfo(name)
            data = None
            if kind == "file":
                info.size = len(extra)
                data = io.BytesIO(extra)
            elif kind == "sym":
                info.type, info.linkname = tarfile.SYMTYPE, extra
            elif kind == "hard":
                info.type, info.linkname = tarfile.LNKTYPE, extra
            elif kind == "dev":
                info.type = tarfile.CHRTYPE
            tar.addfile(info, data)
    return buf.getvalue()


@pytest.mark.parametrize(
    "member, words",
    [
        (("../evil", "file", b"x"), "'..' traversal"),
        (("a/../../evil", "file", b"x"), "'..' traversal"),
        (("/etc/evil", "file", b"x"), "absolute path"),
        (("ln", "sym", "/etc/passwd"), "symlink to '/etc/passwd'"),
        (("hl", "hard", "/etc/passwd"), "hard link"),
        (("null", "dev", None), "device"),
    ],
)
def test_tar_extraction_refuses_unsafe_members(tmp_path, member, words):
    dest = tmp_path / "dest"
    dest.mkdir()
    data = _tar([("ok.txt", "file", b"fine"), member])
    with pytest.raises(UnsafePathError, match=words):
        F.safe_extract_tar(data, dest)
    assert os.listdir(dest) == []  # checked before anything is written
    assert F.safe_extract_tar(data, dest, on_unsafe="skip") == ["ok.txt"]
    assert sorted(os.listdir(dest)) == ["ok.txt"]
    assert not (tmp_path / "evil").exists()


def test_tar_extraction_does_not_follow_existing_symlinks(tmp_path):
    dest = tmp_path / "dest"
    dest.mkdir()
    os.symlink(str(tmp_path), dest / "link")
    with pytest.raises(UnsafePathError):
        F.safe_extract_tar(_tar([("link/pwned", "file", b"x")]), dest)
    assert not (tmp_path / "pwned").exists()


def test_tar_caps(tmp_path):
    with pytest.raises(ValueError, match="per-file cap of 3"):
        F.safe_extract_tar(_tar([("a", "file", b"1234")]), tmp_path, max_file_bytes=3)
    with pytest.raises(ValueError, match="more than 2 members"):
        F.safe_extract_tar(_tar([(f"f{i}", "file", b"") for i in range(3)]), tmp_path, max_members=2)
    with pytest.raises(ValueError, match="not a readable tar"):
        F.safe_extract_tar(b"not a tar at all" * 100, tmp_path)


def test_tar_roundtrip_and_modes(tmp_path):
    data = F.tar_from_files({"run.sh": "#!/bin/sh\necho hi\n", "pkg/m.py": b"x = 1\n"}, prefix="work")
    names = tarfile.open(fileobj=io.BytesIO(data)).getnames()
    assert names == ["work/pkg", "work/run.sh", "work/pkg/m.py"]
    written = F.safe_extract_tar(data, tmp_path, strip="work")
    assert sorted(written) == ["pkg/m.py", "run.sh"]
    assert stat.S_IMODE(os.stat(tmp_path / "run.sh").st_mode) == 0o755
    assert (tmp_path / "pkg" / "m.py").read_bytes() == b"x = 1\n"


def test_tar_from_dir_refuses_host_symlinks(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "a.txt").write_text("a")
    data = F.tar_from_dir(src, "dest")
    assert tarfile.open(fileobj=io.BytesIO(data)).getnames() == ["dest", "dest/sub", "dest/sub/a.txt"]
    os.symlink("/etc/passwd", src / "evil")
    with pytest.raises(UnsafePathError, match="symlinks or special files \\(evil\\)"):
        F.tar_from_dir(src)
    with pytest.raises(NotADirectoryError):
        F.tar_from_dir(src / "sub" / "a.txt")
