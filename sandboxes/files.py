"""Safe file transfer between the host and a sandbox work dir, shared by every backend.

What this module protects against (attack 14, "symlink and tar tricks", of the threat model in docs/sandboxes.md):

- Paths named by the caller (``files=``, ``put_files``, ``get_file``...) must be relative,
  without ``..`` components, without NUL bytes; :func:`validate_relpath` enforces it.
- Reading or writing inside a directory the sandbox could have modified (a host-visible work
  dir, or inside the sandbox by the session worker) never follows a symlink that leaves the
  root: every path component is opened with ``O_NOFOLLOW`` relative to its parent's fd
  (:func:`open_in_root`), symlinks are resolved by hand and only while they stay inside the
  root; devices, FIFOs and sockets are refused.
- Tar streams coming *from* a sandbox (``get_dir``) or *from* a user (``put_dir`` of an
  archive) are extracted member by member with :func:`safe_extract_tar`: absolute names,
  ``..`` traversal, symlinks, hard links, devices and FIFOs are refused (or skipped), each
  file and the total are size capped, the member count is capped, and extraction writes
  through :func:`write_in_root` so a pre-existing symlink in the destination is never
  followed.
- Tar streams built *for* a sandbox (:func:`tar_from_files`, :func:`tar_from_dir`) contain
  only regular files and directories with normalised relative names, fixed owner 0:0 and
  modes without setuid/setgid/sticky bits; host symlinks make :func:`tar_from_dir` raise.

What it does not do: it does not limit how many times a caller transfers files (rate), and it
cannot stop a sandbox from *reading* its own symlinks (inside the sandbox they only reach what
the sandbox can already see). Only the standard library is used.
"""

from __future__ import annotations

import errno
import io
import os
import posixpath
import stat
import tarfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from .types import UnsafePathError

#: Default cap on one transferred file and on a whole transfer (bytes).
MAX_FILE_BYTES = 64 << 20
MAX_TOTAL_BYTES = 256 << 20
#: Default cap on the number of members in one tar stream.
MAX_MEMBERS = 100_000
#: Symlink hops followed (inside the root only) before giving up, as the kernel's ELOOP.
MAX_SYMLINK_HOPS = 40
#: Path components; deeper trees are refused.
MAX_DEPTH = 64

_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def validate_relpath(path: str | os.PathLike[str], *, allow_root: bool = False) -> str:
    """Check a caller-supplied work-dir path and return it normalised (``a/b/c``).

    Accepted: relative POSIX paths such as ``"main.py"``, ``"src/pkg/__init__.py"``,
    ``"./a//b/"`` (normalised to ``"a/b"``). With ``allow_root=True`` the work dir itself
    (``"."`` or ``""``) is accepted and returned as ``"."``.

    Raises :class:`UnsafePathError` for absolute paths, any ``..`` component, NUL bytes,
    non-string input and over-long paths, with a message saying what to pass instead.
    """
    if isinstance(path, os.PathLike):
        path = os.fspath(path)
    if not isinstance(path, str):
        raise UnsafePathError(
            f"file path must be a str relative to the work dir, got {path!r} "
            f"({type(path).__name__})."
        )
    if "\x00" in path:
        raise UnsafePathError(f"file path {path!r} contains a NUL byte; remove it.")
    if path.startswith("/"):
        raise UnsafePathError(
            f"file path {path!r} is absolute; pass a path relative to the work dir "
            f"(e.g. {path.lstrip('/') or 'main.py'!r})."
        )
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafePathError(
            f"file path {path!r} contains '..'; paths must stay inside the work dir."
        )
    if len(parts) > MAX_DEPTH or len(path) > 4096:
        raise UnsafePathError(f"file path {path[:80]!r}... is too long or too deep.")
    if not parts:
        if allow_root:
            return "."
        raise UnsafePathError(f"file path {path!r} names the work dir itself; name a file.")
    return "/".join(parts)


def normalize_files(
    files: Mapping[str, bytes | str] | None,
    *,
    max_file_bytes: int = MAX_FILE_BYTES,
    max_total_bytes: int = MAX_TOTAL_BYTES,
) -> dict[str, bytes]:
    """Validate a ``{relative path: content}`` map; returns ``{normalised path: bytes}``.

    ``str`` contents are encoded as UTF-8. Raises :class:`UnsafePathError` for a bad path,
    ``ValueError`` for bad contents or sizes over the caps, and ``ValueError`` when two keys
    normalise to the same path or one file path is a parent directory of another.
    """
    if files is None:
        return {}
    if not isinstance(files, Mapping):
        raise ValueError(
            f"files must be a mapping of relative path -> bytes|str, got {type(files).__name__}."
        )
    out: dict[str, bytes] = {}
    total = 0
    for raw, content in files.items():
        rel = validate_relpath(raw)
        if isinstance(content, str):
            data = content.encode("utf-8", "surrogateescape")
        elif isinstance(content, (bytes, bytearray, memoryview)):
            data = bytes(content)
        else:
            raise ValueError(
                f"content of file {raw!r} must be bytes or str, got {type(content).__name__}."
            )
        if len(data) > max_file_bytes:
            raise ValueError(
                f"file {raw!r} is {len(data)} bytes, over the cap of {max_file_bytes}; "
                "send smaller files or raise max_file_bytes."
            )
        total += len(data)
        if total > max_total_bytes:
            raise ValueError(
                f"files total more than {max_total_bytes} bytes; send fewer or smaller files."
            )
        if rel in out:
            raise ValueError(f"file path {raw!r} is given twice (normalised to {rel!r}).")
        out[rel] = data
    for rel in out:
        parent = posixpath.dirname(rel)
        while parent:
            if parent in out:
                raise ValueError(
                    f"{parent!r} is given as a file and as the directory of {rel!r}."
                )
            parent = posixpath.dirname(parent)
    return out


def parent_dirs(paths: Iterable[str]) -> list[str]:
    """All parent directories of normalised relative paths, parents first (``a``, ``a/b``)."""
    seen: set[str] = set()
    ordered: list[str] = []
    for rel in paths:
        parts = rel.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in seen:
                seen.add(d)
                ordered.append(d)
    return ordered


# ---------------------------------------------------------------------------------------------
# Walking a directory tree without following symlinks out of it.


def _split(rel: str) -> list[str]:
    return [p for p in rel.split("/") if p not in ("", ".")]


def _resolve_link(root_prefix: str, parents: list[str], target: str, rel: str) -> list[str]:
    """Lexically resolve a symlink ``target`` found under ``parents``; stay inside the root.

    An absolute target is accepted only when it starts with ``root_prefix`` (the work dir's
    path as the sandbox sees it, e.g. ``/work``): it is then relative to the root.
    """
    if target.startswith("/"):
        prefix = root_prefix.rstrip("/")
        if prefix and (target == prefix or target.startswith(prefix + "/")):
            base: list[str] = []
            target = target[len(prefix) :]
        else:
            raise UnsafePathError(
                f"{rel!r} goes through a symlink to {target!r}, outside the work dir; "
                "symlinks out of the work dir are never followed."
            )
    else:
        base = list(parents)
    for part in target.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not base:
                raise UnsafePathError(
                    f"{rel!r} goes through a symlink to {target!r}, outside the work dir; "
                    "symlinks out of the work dir are never followed."
                )
            base.pop()
        else:
            base.append(part)
    return base


def _refuse_special(dir_fd: int, name: str, rel: str) -> None:
    """Refuse to open devices, FIFOs and sockets (opening one can block or have effects)."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode)):
        raise UnsafePathError(f"{rel!r} is a device, FIFO or socket; refusing to open it.")


def open_in_root(
    root: str | os.PathLike[str] | int,
    rel: str,
    flags: int = os.O_RDONLY,
    *,
    mode: int = 0o644,
    root_prefix: str = "/work",
    create_parents: bool = False,
    follow_final: bool = True,
) -> int:
    """Open ``rel`` below ``root`` without ever leaving it; returns a new fd (close it).

    ``root`` is a directory path or an open directory fd (not closed). Each component is
    opened with ``O_NOFOLLOW`` relative to its parent. A symlink component is followed only
    if its target, resolved by hand, stays inside the root (at most ``MAX_SYMLINK_HOPS``
    hops); absolute targets are inside only when they start with ``root_prefix``.
    ``follow_final=False`` refuses a symlink as the last component instead (for writes).
    ``create_parents`` makes missing directories (mode 0o755) along the way.

    Raises :class:`UnsafePathError` when the path escapes or traverses something that is not
    a directory, FileNotFoundError when a component is missing, other OSErrors as the
    kernel reports them.
    """
    rel = validate_relpath(rel, allow_root=True)
    own_root = not isinstance(root, int)
    root_fd = os.open(os.fspath(root), _O_DIR) if own_root else os.dup(root)  # type: ignore[arg-type]
    try:
        pending = _split(rel)
        done: list[str] = []
        hops = 0
        cur = os.dup(root_fd)
        try:
            while pending:
                name = pending.pop(0)
                last = not pending
                try:
                    if last:
                        _refuse_special(cur, name, rel)
                        fd = os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=cur)
                    else:
                        fd = os.open(name, _O_DIR, dir_fd=cur)
                except FileNotFoundError:
                    if last or not create_parents:
                        raise
                    os.mkdir(name, 0o755, dir_fd=cur)
                    fd = os.open(name, _O_DIR, dir_fd=cur)
                except OSError as e:
                    if e.errno not in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
                        raise
                    st = os.stat(name, dir_fd=cur, follow_symlinks=False)
                    if not stat.S_ISLNK(st.st_mode):
                        raise UnsafePathError(
                            f"{rel!r}: {'/'.join(done + [name])!r} is not a directory."
                        ) from None
                    if last and not follow_final:
                        raise UnsafePathError(
                            f"{rel!r} is a symlink; refusing to write through it."
                        ) from None
                    hops += 1
                    if hops > MAX_SYMLINK_HOPS:
                        raise UnsafePathError(f"{rel!r}: too many levels of symlinks.") from None
                    target = os.readlink(name, dir_fd=cur)
                    resolved = _resolve_link(root_prefix, done, target, rel)
                    # Restart the walk from the root along the resolved path.
                    pending = resolved + pending
                    done = []
                    os.close(cur)
                    cur = os.dup(root_fd)
                    continue
                if last:
                    return fd
                os.close(cur)
                cur = fd
                done.append(name)
            # rel was "." (or a symlink chain resolved to the root): the root itself.
            return os.open(".", flags | os.O_CLOEXEC, dir_fd=cur)
        finally:
            os.close(cur)
    finally:
        os.close(root_fd)


def read_in_root(
    root: str | os.PathLike[str] | int,
    rel: str,
    *,
    max_bytes: int = MAX_FILE_BYTES,
    root_prefix: str = "/work",
) -> bytes:
    """Read one regular file below ``root`` (see :func:`open_in_root`), at most ``max_bytes``.

    Raises FileNotFoundError, :class:`UnsafePathError` (escape, or not a regular file: a
    directory, device, FIFO or socket), ``ValueError`` when the file is larger than
    ``max_bytes`` (the message gives its size).
    """
    fd = open_in_root(root, rel, os.O_RDONLY | os.O_NONBLOCK, root_prefix=root_prefix)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
            raise UnsafePathError(f"{rel!r} is {kind}; only regular files can be read.")
        if st.st_size > max_bytes:
            raise ValueError(
                f"{rel!r} is {st.st_size} bytes, over max_bytes={max_bytes}; "
                "raise max_bytes or read a smaller file."
            )
        chunks = []
        total = 0
        while True:
            chunk = os.read(fd, min(1 << 20, max_bytes + 1 - total))
            if not chunk:
                break
            total += len(chunk)
            if total > max_bytes:
                raise ValueError(f"{rel!r} grew past max_bytes={max_bytes} while being read.")
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def write_in_root(
    root: str | os.PathLike[str] | int,
    rel: str,
    data: bytes,
    *,
    mode: int = 0o644,
    root_prefix: str = "/work",
) -> None:
    """Create or replace a regular file below ``root``, creating parent directories.

    Never writes through a symlink (as the final component it is refused; as a parent it is
    followed only inside the root). Raises :class:`UnsafePathError` on escape.
    """
    fd = open_in_root(
        root,
        rel,
        os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
        mode=mode & 0o777,
        root_prefix=root_prefix,
        create_parents=True,
        follow_final=False,
    )
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UnsafePathError(f"{rel!r} exists and is not a regular file.")
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
    finally:
        os.close(fd)


def makedirs_in_root(root: str | os.PathLike[str] | int, rel: str, *, root_prefix: str = "/work") -> None:
    """``mkdir -p`` below ``root`` without following symlinks out of it.

    Raises :class:`UnsafePathError` on escape or when a component exists as a non-directory.
    """
    rel = validate_relpath(rel, allow_root=True)
    done = "."
    for name in _split(rel):
        parent = open_in_root(root, done, os.O_RDONLY | os.O_DIRECTORY, root_prefix=root_prefix)
        try:
            os.mkdir(name, 0o755, dir_fd=parent)
        except FileExistsError:
            pass
        finally:
            os.close(parent)
        done = f"{done}/{name}"
    # Checks the result is a directory inside the root (an in-root symlink to one is fine).
    os.close(open_in_root(root, rel, os.O_RDONLY | os.O_DIRECTORY, root_prefix=root_prefix))


def walk_in_root(
    root: str | os.PathLike[str] | int,
    rel: str = ".",
    *,
    root_prefix: str = "/work",
    max_members: int = MAX_MEMBERS,
) -> list[tuple[str, str]]:
    """List a directory tree below ``root`` without following any symlink inside it.

    Returns ``[(relative path, kind)]`` with kind ``"dir"``, ``"file"``, ``"symlink"`` or
    ``"other"`` (devices, FIFOs, sockets), paths relative to ``rel``. ``rel`` itself may be
    reached through in-root symlinks (see :func:`open_in_root`); entries below it never are.
    """
    start = open_in_root(root, rel, os.O_RDONLY | os.O_DIRECTORY, root_prefix=root_prefix)
    out: list[tuple[str, str]] = []

    def visit(dfd: int, prefix: str, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise UnsafePathError(f"directory tree under {rel!r} is deeper than {MAX_DEPTH}.")
        for name in sorted(os.listdir(dfd)):
            if len(out) >= max_members:
                raise ValueError(f"more than {max_members} entries under {rel!r}.")
            path = f"{prefix}{name}"
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                out.append((path, "dir"))
                sub = os.open(name, _O_DIR, dir_fd=dfd)
                try:
                    visit(sub, path + "/", depth + 1)
                finally:
                    os.close(sub)
            elif stat.S_ISREG(st.st_mode):
                out.append((path, "file"))
            elif stat.S_ISLNK(st.st_mode):
                out.append((path, "symlink"))
            else:
                out.append((path, "other"))

    try:
        visit(start, "", 0)
    finally:
        os.close(start)
    return out


# ---------------------------------------------------------------------------------------------
# Tar streams.


def _tarinfo(name: str, *, size: int = 0, is_dir: bool = False, mode: int = 0o644) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE if is_dir else tarfile.REGTYPE
    info.mode = (0o755 if is_dir else mode) & 0o777
    info.size = 0 if is_dir else size
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = 0
    return info


def tar_from_files(files: Mapping[str, bytes | str], *, prefix: str = "") -> bytes:
    """An uncompressed tar of ``{relative path: content}`` (validated by :func:`normalize_files`).

    Parent directories get their own entries; names are prefixed with ``prefix/`` when given
    (e.g. for ``docker put_archive`` into a parent of the work dir). Owner 0:0, modes 0644
    (0755 when a file starts with ``#!``) and 0755 for directories.
    """
    norm = normalize_files(files)
    pre = validate_relpath(prefix, allow_root=True) if prefix else "."
    join = (lambda p: p) if pre == "." else (lambda p: f"{pre}/{p}")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in parent_dirs(norm):
            tar.addfile(_tarinfo(join(d), is_dir=True))
        for rel, data in norm.items():
            mode = 0o755 if data.startswith(b"#!") else 0o644
            tar.addfile(_tarinfo(join(rel), size=len(data), mode=mode), io.BytesIO(data))
    return buf.getvalue()


def tar_from_dir(
    local_dir: str | os.PathLike[str],
    dest: str = ".",
    *,
    max_total_bytes: int = MAX_TOTAL_BYTES,
    max_members: int = MAX_MEMBERS,
) -> bytes:
    """An uncompressed tar of a host directory tree, names rooted at ``dest`` (relative).

    Only regular files and directories are packed (modes kept, setuid/setgid/sticky cleared,
    owner 0:0). A symlink, device, FIFO or socket anywhere in the tree raises
    :class:`UnsafePathError`: a host symlink would copy host files into the sandbox.
    Raises NotADirectoryError when ``local_dir`` is not a directory, ``ValueError`` over caps.
    """
    base = Path(local_dir)
    if base.is_symlink() or not base.is_dir():
        raise NotADirectoryError(f"put_dir source {str(base)!r} is not a directory (or is a symlink).")
    dest_rel = validate_relpath(dest, allow_root=True)
    join = (lambda p: p) if dest_rel == "." else (lambda p: f"{dest_rel}/{p}")
    entries = walk_in_root(base, ".", root_prefix="", max_members=max_members)
    bad = [p for p, kind in entries if kind in ("symlink", "other")]
    if bad:
        raise UnsafePathError(
            f"put_dir refuses {str(base)!r}: it contains symlinks or special files "
            f"({', '.join(bad[:5])}); copy regular files only."
        )
    buf = io.BytesIO()
    total = 0
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        if dest_rel != ".":
            for d in parent_dirs([dest_rel + "/x"]):
                tar.addfile(_tarinfo(d, is_dir=True))
        for rel, kind in entries:
            if kind == "dir":
                tar.addfile(_tarinfo(join(rel), is_dir=True))
                continue
            fd = open_in_root(base, rel, os.O_RDONLY | os.O_NONBLOCK, root_prefix="", follow_final=False)
            with os.fdopen(fd, "rb") as fh:
                st = os.fstat(fh.fileno())
                if not stat.S_ISREG(st.st_mode):
                    raise UnsafePathError(f"put_dir: {rel!r} changed into a non-regular file.")
                total += st.st_size
                if total > max_total_bytes:
                    raise ValueError(
                        f"put_dir: {str(base)!r} holds more than {max_total_bytes} bytes."
                    )
                info = _tarinfo(join(rel), size=st.st_size, mode=st.st_mode & 0o777)
                tar.addfile(info, fh)
    return buf.getvalue()


def _member_problem(member: tarfile.TarInfo) -> tuple[str | None, str]:
    """(reason it is unsafe or None, normalised name)."""
    name = member.name
    if "\x00" in name:
        return "NUL byte in name", name
    if name.startswith("/"):
        return "absolute path", name
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        return "'..' traversal", name
    if len(parts) > MAX_DEPTH:
        return "too deep", name
    norm = "/".join(parts) or "."
    if member.issym():
        return f"symlink to {member.linkname!r}", norm
    if member.islnk():
        return f"hard link to {member.linkname!r}", norm
    if not (member.isreg() or member.isdir()):
        return "device, FIFO or other special file", norm
    return None, norm


def safe_extract_tar(
    data: bytes | io.BufferedIOBase,
    dest_dir: str | os.PathLike[str],
    *,
    strip: str = "",
    on_unsafe: str = "raise",
    max_file_bytes: int = MAX_FILE_BYTES,
    max_total_bytes: int = MAX_TOTAL_BYTES,
    max_members: int = MAX_MEMBERS,
) -> list[str]:
    """Extract a tar stream into ``dest_dir`` (which must exist); returns the files written.

    Only regular files and directories are created; file modes are kept minus setuid/setgid/
    sticky bits; owners and times are not restored. ``strip`` removes a leading directory from
    every member name (members outside it are unsafe). Unsafe members (absolute names, ``..``,
    symlinks, hard links, devices, FIFOs) raise :class:`UnsafePathError` with
    ``on_unsafe="raise"`` (before anything is written: the stream is checked first) or are
    skipped with ``on_unsafe="skip"``. Writes go through :func:`write_in_root` so existing
    symlinks in ``dest_dir`` are never followed. Size and member caps raise ``ValueError``.
    """
    if on_unsafe not in ("raise", "skip"):
        raise ValueError(f"on_unsafe must be 'raise' or 'skip', got {on_unsafe!r}.")
    fileobj = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
    strip_parts = _split(validate_relpath(strip, allow_root=True)) if strip else []
    try:
        tar = tarfile.open(fileobj=fileobj, mode="r:*")
    except tarfile.TarError as e:
        raise ValueError(f"not a readable tar stream: {e}") from None
    with tar:
        plan: list[tuple[tarfile.TarInfo, str]] = []
        total = 0
        for count, member in enumerate(tar, 1):
            if count > max_members:
                raise ValueError(f"tar stream has more than {max_members} members.")
            problem, norm = _member_problem(member)
            if problem is None and strip_parts:
                parts = _split(norm)
                if parts[: len(strip_parts)] != strip_parts:
                    problem = f"outside {strip!r}"
                else:
                    norm = "/".join(parts[len(strip_parts) :]) or "."
            if problem is not None:
                if on_unsafe == "raise":
                    raise UnsafePathError(
                        f"refusing tar member {member.name!r}: {problem}. Archives may hold "
                        "only regular files and directories with relative names inside the "
                        "destination."
                    )
                continue
            if member.isreg():
                if member.size > max_file_bytes:
                    raise ValueError(
                        f"tar member {member.name!r} is {member.size} bytes, over the per-file "
                        f"cap of {max_file_bytes}."
                    )
                total += member.size
                if total > max_total_bytes:
                    raise ValueError(f"tar stream holds more than {max_total_bytes} bytes.")
            plan.append((member, norm))
        written: list[str] = []
        for member, norm in plan:
            if member.isdir():
                makedirs_in_root(dest_dir, norm, root_prefix="")
                continue
            src = tar.extractfile(member)
            content = src.read(max_file_bytes + 1) if src is not None else b""
            write_in_root(dest_dir, norm, content, mode=member.mode & 0o777, root_prefix="")
            written.append(norm)
    return written
