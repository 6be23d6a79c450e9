"""Images for the docker sandbox backend, built with or without a registry.

Two builders, one contract. Every sandbox image has ``python3`` and ``bash`` on
``PATH=/usr/local/bin:/usr/bin:/bin``, coreutils (``timeout``, ``rm``, ``kill`` via the shell),
a user ``sandbox`` with uid/gid :data:`SANDBOX_UID` that runs the untrusted code, an owner-less
uid :data:`KEEPER_UID` for the container's idle main process, and an empty ``/work``.

- :func:`build_local_image` needs no registry and no network. It assembles a root filesystem
  from this machine's own files: a Python interpreter (``/usr/bin/python3`` when present, else
  the running one) with its standard library (tests, tkinter, idle, the static libpython and
  other dead weight left out), bash, dash, coreutils and a few text tools, plus every shared
  library ``ldd`` says they load, plus what glibc loads by name at run time and ``ldd`` never
  lists (:data:`RUNTIME_LIBS`: ``libgcc_s`` for thread exit, the NSS modules behind
  ``/etc/nsswitch.conf``; see :func:`_runtime_lib_paths`), the C.UTF-8 locale and the time zone
  database. It streams that as one tar to ``docker import``. Result: about 55 MB, built in
  seconds; tagged ``agentrl-sandbox:py311-<hash>`` where the hash covers the
  builder version and every input file's path, size and mtime, so a changed interpreter gives a
  new tag and an unchanged one is never rebuilt.
- :func:`build_dockerfile_image` builds ``FROM python:3.11-slim`` with the same user layout; use
  it where a registry is reachable (the base image is pulled).

:func:`ensure_image` is what the backend calls lazily: it returns the tag of an image that
exists, building the local one if needed. ``agentrl sandbox build-image`` (see
:func:`add_build_image_parser`) builds one explicitly.

Imports only the standard library at module level; the ``docker`` SDK is passed in as a client.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

IMAGE_REPO = "agentrl-sandbox"
#: Bump when the rootfs layout or the generated files change, so old tags are not reused.
BUILDER_VERSION = "4"
#: uid/gid of the user that runs untrusted code (execs, sessions).
SANDBOX_UID = 1000
#: uid/gid of the container's main process (init + ``sleep``). Distinct from SANDBOX_UID so
#: ``kill -9 -1`` from the sandbox user can never take the container down with it.
KEEPER_UID = 65534
LABEL = "org.agentrl.sandbox"
ENV_IMAGE = "AGENTRL_SANDBOX_IMAGE"
DEFAULT_BASE = "python:3.11-slim"

_TOOLS = (
    # shells and coreutils (everything a shell-using agent expects, and what the backend uses)
    "bash dash sh cat chmod cp cut date dd df dirname basename du echo env expr false head id "
    "ln ls mkdir mktemp mv nproc od printf pwd readlink realpath rm rmdir seq sleep sort stat "
    "tail tee test timeout touch tr true truncate uname uniq wc whoami yes base64 md5sum "
    "sha256sum comm paste split nl fold tac "
    # text tools
    "grep sed awk find xargs diff tar gzip"
).split()

# Parts of the standard library that only cost image size (and build time on vfs storage).
_STDLIB_SKIP_DIRS = {
    "test", "tests", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "pydoc_data",
    "site-packages", "dist-packages",
}
_STDLIB_SKIP_FILE = re.compile(
    r"(\.opt-[12]\.pyc$)|(^_test.*\.so$)|(^_ctypes_test.*\.so$)|(^xxlimited.*\.so$)"
    r"|(^_xxtestfuzz.*\.so$)|(^turtle\.py$)|(^EXTERNALLY-MANAGED$)"
)

#: Libraries glibc (not the program) opens by soname at run time, so ``ldd`` cannot report them.
#: ``libgcc_s.so.1``: pthread_exit and thread cancellation unwind the stack through it; without
#: it every exiting thread aborts the process ("libgcc_s.so.1 must be installed for pthread_exit
#: to work", SIGABRT), e.g. Python daemon threads at interpreter exit. ``libnss_files`` and
#: ``libnss_dns``: the modules for the ``files`` and ``dns`` sources of the image's
#: ``/etc/nsswitch.conf`` (getpwuid, getgrgid, getaddrinfo). Since glibc 2.34 both are built into
#: libc and these files are small stubs; before that they are the real modules, and without them
#: ``pwd.getpwuid`` fails. A name the host does not have is skipped (musl has none of them).
RUNTIME_LIBS = ("libgcc_s.so.1", "libnss_files.so.2", "libnss_dns.so.2")

#: Asks an interpreter's own loader where it finds each soname in argv (dlopen + dlinfo's link
#: map, so the path is the one the loader searched, symlinks kept), printing {soname: path}.
_RUNTIME_PROBE = r"""
import ctypes, json, sys
class LinkMap(ctypes.Structure):
    _fields_ = [("l_addr", ctypes.c_void_p), ("l_name", ctypes.c_char_p)]
dlinfo = None
for lib in (None, "libdl.so.2"):
    try:
        dlinfo = ctypes.CDLL(lib).dlinfo
        break
    except (OSError, AttributeError):
        pass
found = {}
for name in sys.argv[1:]:
    try:
        handle = ctypes.CDLL(name)._handle
    except OSError:
        continue
    lm = ctypes.POINTER(LinkMap)()
    if dlinfo is not None and dlinfo(ctypes.c_void_p(handle), 2, ctypes.byref(lm)) == 0 and lm:
        found[name] = lm.contents.l_name.decode()
print(json.dumps(found))
"""

_ZONEINFO = "/usr/share/zoneinfo"

_PASSWD = (
    "root:x:0:0:root:/root:/usr/sbin/nologin\n"
    f"sandbox:x:{SANDBOX_UID}:{SANDBOX_UID}:sandbox:/work:/bin/bash\n"
    f"nobody:x:{KEEPER_UID}:{KEEPER_UID}:nobody:/nonexistent:/usr/sbin/nologin\n"
)
_GROUP = f"root:x:0:\nsandbox:x:{SANDBOX_UID}:\nnogroup:x:{KEEPER_UID}:\n"


@dataclass
class RootfsPlan:
    """What goes into the local image: host files, symlinks and generated files by image path."""

    python: str
    python_version: str  # "3.11"
    files: dict[str, str] = field(default_factory=dict)  # image path -> host path (regular file)
    symlinks: dict[str, str] = field(default_factory=dict)  # image path -> link target
    generated: dict[str, bytes] = field(default_factory=dict)  # image path -> content
    dirs: dict[str, int] = field(default_factory=dict)  # image path -> mode

    def tag(self) -> str:
        """``agentrl-sandbox:py311-<12 hex>`` from the builder version and every input."""
        h = hashlib.sha256(f"builder {BUILDER_VERSION}\n".encode())
        for dest in sorted(self.files):
            st = os.stat(self.files[dest])
            h.update(f"f {dest} {st.st_size} {st.st_mtime_ns} {st.st_mode & 0o777}\n".encode())
        for dest in sorted(self.symlinks):
            h.update(f"l {dest} {self.symlinks[dest]}\n".encode())
        for dest in sorted(self.generated):
            h.update(f"g {dest} ".encode() + hashlib.sha256(self.generated[dest]).digest())
        for dest in sorted(self.dirs):
            h.update(f"d {dest} {self.dirs[dest]:o}\n".encode())
        return f"{IMAGE_REPO}:py{self.python_version.replace('.', '')}-{h.hexdigest()[:12]}"

    def size_bytes(self) -> int:
        return sum(os.path.getsize(p) for p in self.files.values()) + sum(
            len(b) for b in self.generated.values()
        )


def _default_python() -> str:
    for cand in ("/usr/bin/python3", sys.executable):
        if cand and os.path.exists(cand):
            return cand
    raise FileNotFoundError("no Python interpreter found for the sandbox image")


def _python_info(python: str) -> dict[str, str]:
    code = (
        "import sys, sysconfig, json; print(json.dumps({'exe': sys.executable, "
        "'version': '%d.%d' % sys.version_info[:2], 'stdlib': sysconfig.get_path('stdlib'), "
        "'platstdlib': sysconfig.get_path('platstdlib')}))"
    )
    out = subprocess.run([python, "-I", "-S", "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def _runtime_lib_paths(python: str, libc_dirs: list[str]) -> dict[str, str]:
    """Where :data:`RUNTIME_LIBS` are on this machine: ``{soname: host path}``.

    Asked of ``python`` itself (:data:`_RUNTIME_PROBE`), so an interpreter with its own library
    directory (a conda or pyenv build) gets the copy its loader would really open. A name the
    probe could not resolve is looked up in ``libc_dirs`` (where ldd found libc: glibc's own
    directory, also libgcc_s's on Debian, Ubuntu and Fedora). Names found nowhere are left out.
    """
    found: dict[str, str] = {}
    try:
        out = subprocess.run([python, "-I", "-S", "-c", _RUNTIME_PROBE, *RUNTIME_LIBS],
                             capture_output=True, text=True, timeout=60)
        found = {k: v for k, v in json.loads(out.stdout or "{}").items()
                 if k in RUNTIME_LIBS and os.path.isabs(v) and os.path.isfile(v)}
    except (OSError, ValueError, subprocess.TimeoutExpired) as e:
        log.debug("runtime library probe of %s failed: %s", python, e)
    for name in RUNTIME_LIBS:
        for d in libc_dirs:
            if name not in found and os.path.isfile(os.path.join(d, name)):
                found[name] = os.path.join(d, name)
    return found


def _ldd(paths: list[str]) -> list[str]:
    """Absolute paths of the shared libraries (and loader) that ``paths`` need, as ldd prints
    them; one ldd call per 200 files (ldd per file made planning take seconds)."""
    libs: dict[str, None] = {}
    for i in range(0, len(paths), 200):
        try:
            out = subprocess.run(["ldd", *paths[i : i + 200]], capture_output=True, text=True,
                                 timeout=120).stdout
        except (OSError, subprocess.TimeoutExpired):
            continue
        for line in out.splitlines():
            m = re.search(r"(?:=>\s*)?(/\S+)\s+\(0x", line)
            if m:
                libs[m.group(1)] = None
    return list(libs)


def _ldd_cached(paths: list[str]) -> list[str]:
    """:func:`_ldd`, remembered on disk by the paths, sizes and mtimes of ``paths`` (ldd takes
    about a second for the ~130 ELF files of the image; the libraries it names are stat'ed
    again for the image tag, so an updated library still changes the tag)."""
    h = hashlib.sha256(f"ldd {BUILDER_VERSION}\n".encode())
    for p in sorted(paths):
        st = os.stat(p)
        h.update(f"{p} {st.st_size} {st.st_mtime_ns}\n".encode())
    key = h.hexdigest()[:24]
    cache_dir = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "agentrl")
    path = os.path.join(cache_dir, f"ldd-{key}.json")
    try:
        with open(path) as fh:
            libs = json.load(fh)
        if isinstance(libs, list) and all(isinstance(x, str) and os.path.exists(x) for x in libs):
            return libs
    except (OSError, ValueError):
        pass
    libs = _ldd(paths)
    try:
        os.makedirs(cache_dir, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=cache_dir, delete=False, suffix=".tmp") as fh:
            json.dump(libs, fh)
        os.replace(fh.name, path)
    except OSError:
        pass
    return libs


_SYSTEM_LIB_DIRS = ("/lib/", "/lib64/", "/usr/lib/", "/usr/lib64/")


class _Collector:
    """Adds host paths to a plan, keeping every symlink on the way (like ``cp -P --parents``)."""

    def __init__(self, plan: RootfsPlan) -> None:
        self.plan = plan
        self.elf: list[str] = []

    def add(self, host_path: str, dest: str | None = None) -> None:
        """Add ``host_path`` at ``dest`` (default: the same path), following symlinks by adding
        the links themselves and their targets, so the loader's paths resolve in the image."""
        path = os.path.abspath(host_path)
        if dest is not None and dest != path:
            self.plan.files[dest] = os.path.realpath(path)
            return
        seen = 0
        while True:
            seen += 1
            if seen > 40:
                raise OSError(f"too many symlinks resolving {host_path}")
            # resolve symlinks in the directory components first
            parts = Path(path).parts
            for i in range(2, len(parts)):
                prefix = os.path.join(*parts[:i])
                if os.path.islink(prefix):
                    target = os.readlink(prefix)
                    self.plan.symlinks[prefix] = target
                    resolved = os.path.normpath(os.path.join(os.path.dirname(prefix), target))
                    path = os.path.join(resolved, *parts[i:])
                    break
            else:
                if os.path.islink(path):
                    target = os.readlink(path)
                    self.plan.symlinks[path] = target
                    path = os.path.normpath(os.path.join(os.path.dirname(path), target))
                    continue
                if os.path.isfile(path):
                    self.plan.files[path] = path
                return

    def add_with_libs(self, host_path: str, dest: str | None = None) -> None:
        """Add an ELF file; its libraries are added by :meth:`add_libraries` (one ldd run)."""
        self.add(host_path, dest)
        self.elf.append(host_path)

    def add_libraries(self) -> list[str]:
        """Add every library ldd names for the ELF files so far; returns those paths."""
        libs = _ldd_cached(self.elf)
        for lib in libs:
            self.add_library(lib)
        return libs

    def add_library(self, lib: str) -> None:
        self.add(lib)
        if not lib.startswith(_SYSTEM_LIB_DIRS):
            # e.g. pyenv's libpython, found through an $ORIGIN rpath that points elsewhere
            # once the binary sits in /usr/bin: also put it where the loader always looks.
            self.plan.files.setdefault(f"/usr/lib/{os.path.basename(lib)}", os.path.realpath(lib))


def plan_rootfs(python: str | None = None) -> RootfsPlan:
    """Decide what the local image contains (no copying yet). ``python`` defaults to
    ``/usr/bin/python3`` if present, else the running interpreter."""
    python = python or _default_python()
    info = _python_info(python)
    ver = info["version"]
    plan = RootfsPlan(python=python, python_version=ver)
    col = _Collector(plan)

    # The interpreter goes to /usr/bin/pythonX.Y and its stdlib to /usr/lib/pythonX.Y whatever
    # the host layout: CPython finds its prefix by searching upward from the binary for
    # lib/pythonX.Y/os.py, so this layout works for Debian, pyenv and python.org builds alike.
    exe = os.path.realpath(info["exe"])
    col.add_with_libs(exe, f"/usr/bin/python{ver}")
    plan.symlinks["/usr/bin/python3"] = f"python{ver}"
    plan.symlinks["/usr/bin/python"] = f"python{ver}"
    stdlib_dest = f"/usr/lib/python{ver}"
    for src_root in dict.fromkeys([info["stdlib"], info["platstdlib"]]):
        for root, dirnames, filenames in os.walk(src_root):
            rel = os.path.relpath(root, src_root)
            dirnames[:] = sorted(
                d for d in dirnames
                if not (rel == "." and (d in _STDLIB_SKIP_DIRS or d.startswith("config-")))
                and d not in ("test", "tests", "idle_test")
            )
            for name in sorted(filenames):
                if _STDLIB_SKIP_FILE.search(name):
                    continue
                src = os.path.join(root, name)
                if os.path.islink(src) or not os.path.isfile(src):
                    continue
                dest = os.path.normpath(os.path.join(stdlib_dest, rel, name))
                plan.files[dest] = src
                if name.endswith(".so"):
                    col.elf.append(src)

    for tool in _TOOLS:
        found = shutil.which(tool, path="/usr/bin:/bin:/usr/local/bin")
        if found is None:
            continue
        dest = f"/usr/bin/{tool}"
        if tool == "sh":
            plan.symlinks[dest] = "dash" if shutil.which("dash") else "bash"
            continue
        col.add_with_libs(os.path.realpath(found), dest)

    libs = col.add_libraries()

    # What glibc dlopens by name (RUNTIME_LIBS), with the libraries those need in turn.
    libc_dirs = list(dict.fromkeys(os.path.dirname(p) for p in libs
                                   if os.path.basename(p).startswith("libc.so")))
    runtime = _runtime_lib_paths(python, libc_dirs)
    if "libgcc_s.so.1" not in runtime:
        log.warning("libgcc_s.so.1 not found: threads that exit will abort in the sandbox image")
    col.elf = list(runtime.values())
    for lib in runtime.values():
        col.add_library(lib)
    col.add_libraries()

    # Locale data: LANG=C.UTF-8 (built into glibc >= 2.35, a data directory before).
    locale = "/usr/lib/locale/C.utf8"
    if os.path.isdir(locale):
        for root, _dirs, filenames in os.walk(locale):
            for name in filenames:
                plan.files[os.path.join(root, name)] = os.path.join(root, name)
    # Time zones (0.6 MB): glibc reads them for TZ=Area/City, Python's zoneinfo for ZoneInfo().
    # right/ (leap-second variants) is left out; links leaving the database (localtime ->
    # /etc/localtime) too.
    right = os.path.join(_ZONEINFO, "right")
    for root, dirnames, filenames in os.walk(_ZONEINFO):
        dirnames[:] = sorted(d for d in dirnames if os.path.join(root, d) != right)
        for name in sorted(filenames) + dirnames:  # os.walk lists links to directories as dirs
            path = os.path.join(root, name)
            if os.path.islink(path):
                target = os.path.realpath(path)
                if target.startswith(_ZONEINFO + "/") and not target.startswith(right + "/") \
                        and target != right and os.path.exists(target):
                    plan.symlinks[path] = os.readlink(path)
            elif os.path.isfile(path):
                plan.files[path] = path

    # Merged-/usr layout, so /bin/sh and /lib64/ld-linux-*.so resolve even when the host is not.
    for link, target in (("/bin", "usr/bin"), ("/sbin", "usr/sbin"), ("/lib", "usr/lib"), ("/lib64", "usr/lib64")):
        if not any(p == link or p.startswith(link + "/") for p in plan.files):
            plan.symlinks.setdefault(link, target)
    plan.generated["/etc/passwd"] = _PASSWD.encode()
    plan.generated["/etc/group"] = _GROUP.encode()
    plan.generated["/etc/hostname"] = b"sandbox\n"
    plan.generated["/etc/hosts"] = b"127.0.0.1 localhost sandbox\n::1 localhost ip6-localhost\n"
    plan.generated["/etc/nsswitch.conf"] = b"passwd: files\ngroup: files\nhosts: files dns\n"
    plan.generated["/etc/agentrl-sandbox"] = f"builder {BUILDER_VERSION} python {ver}\n".encode()
    for d, mode in (("/work", 0o755), ("/tmp", 0o1777), ("/proc", 0o555), ("/sys", 0o555),
                    ("/dev", 0o755), ("/etc", 0o755), ("/root", 0o700), ("/usr/sbin", 0o755),
                    ("/usr/lib64", 0o755), ("/var/tmp", 0o1777), ("/run", 0o755),
                    ("/opt/agentrl", 0o755)):
        plan.dirs[d] = mode
    return plan


def _write_tar(plan: RootfsPlan, fileobj: Any) -> None:
    """Deterministic tar of the plan: root-owned, fixed mtime, parents before children."""
    mtime = 1_700_000_000
    entries: dict[str, tuple[str, Any]] = {}
    for dest, mode in plan.dirs.items():
        entries[dest] = ("dir", mode)
    for dest, target in plan.symlinks.items():
        entries[dest] = ("link", target)
    for dest, src in plan.files.items():
        entries[dest] = ("file", src)
    for dest, content in plan.generated.items():
        entries[dest] = ("gen", content)
    # implicit parent directories
    for dest in list(entries):
        parent = os.path.dirname(dest)
        while parent not in ("/", ""):
            if parent in entries and entries[parent][0] == "link":
                raise ValueError(f"image path {dest} lies under the symlink {parent}")
            entries.setdefault(parent, ("dir", 0o755))
            parent = os.path.dirname(parent)

    with tarfile.open(fileobj=fileobj, mode="w|", format=tarfile.GNU_FORMAT) as tar:
        for dest in sorted(entries, key=lambda p: (p.count("/"), p)):
            kind, arg = entries[dest]
            ti = tarfile.TarInfo(dest.lstrip("/"))
            ti.mtime, ti.uid, ti.gid, ti.uname, ti.gname = mtime, 0, 0, "root", "root"
            if kind == "dir":
                ti.type, ti.mode = tarfile.DIRTYPE, arg
                tar.addfile(ti)
            elif kind == "link":
                ti.type, ti.linkname, ti.mode = tarfile.SYMTYPE, arg, 0o777
                tar.addfile(ti)
            elif kind == "gen":
                ti.size, ti.mode = len(arg), 0o644
                tar.addfile(ti, io.BytesIO(arg))
            else:
                st = os.stat(arg)
                ti.size, ti.mode = st.st_size, (0o755 if st.st_mode & 0o111 else 0o644)
                with open(arg, "rb") as f:
                    tar.addfile(ti, f)


def image_exists(client: Any, tag: str) -> bool:
    import docker.errors

    try:
        client.images.get(tag)
        return True
    except docker.errors.ImageNotFound:
        return False


def build_local_image(client: Any, *, python: str | None = None, force: bool = False) -> str:
    """Build the sandbox image from this machine's files and ``docker import`` it.

    Returns the tag. Skips the build when the tag already exists (unless ``force``).
    """
    plan = plan_rootfs(python)
    tag = plan.tag()
    if not force and image_exists(client, tag):
        log.info("sandbox image %s already present", tag)
        return tag
    t0 = time.monotonic()
    log.info(
        "building sandbox image %s from local files (%s, %d files, %.1f MB)",
        tag, plan.python, len(plan.files), plan.size_bytes() / 1e6,
    )
    repo, _, version = tag.partition(":")
    changes = [
        f"USER {KEEPER_UID}:{KEEPER_UID}",
        "WORKDIR /work",
        "ENV PATH=/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8 PYTHONUTF8=1",
        f'LABEL {LABEL}="{BUILDER_VERSION}" {LABEL}.python="{plan.python_version}"',
        'CMD ["sleep", "infinity"]',
    ]
    with tempfile.TemporaryFile(prefix="agentrl-rootfs-", suffix=".tar") as tmp:
        _write_tar(plan, tmp)
        tmp.seek(0)
        out = client.api.import_image(
            src=tmp, repository=repo, tag=version, changes=changes
        )
    if not image_exists(client, tag):
        raise RuntimeError(f"docker import of {tag} did not produce an image: {out!r}")
    log.info("built sandbox image %s in %.1f s", tag, time.monotonic() - t0)
    try:  # a forced rebuild leaves the old image untagged: ~50 MB of vfs storage each
        client.images.prune(filters={"dangling": True, "label": LABEL})
    except Exception:  # noqa: BLE001 - housekeeping only
        pass
    return tag


def dockerfile_text(base: str = DEFAULT_BASE) -> str:
    """The Dockerfile of the registry-based image (same contract as the local one)."""
    return (
        f"FROM {base}\n"
        f"RUN groupadd -g {SANDBOX_UID} sandbox && useradd -u {SANDBOX_UID} -g {SANDBOX_UID} "
        f"-d /work -s /bin/bash sandbox \\\n"
        f" && mkdir -p /work /opt/agentrl && chmod 755 /work /opt/agentrl\n"
        f'LABEL {LABEL}="{BUILDER_VERSION}"\n'
        "ENV LANG=C.UTF-8 PYTHONUTF8=1\n"
        "WORKDIR /work\n"
        f"USER {KEEPER_UID}:{KEEPER_UID}\n"
        'CMD ["sleep", "infinity"]\n'
    )


def build_dockerfile_image(client: Any, *, base: str = DEFAULT_BASE, force: bool = False) -> str:
    """Build the sandbox image from :func:`dockerfile_text` (pulls ``base``: needs a registry)."""
    text = dockerfile_text(base)
    digest = hashlib.sha256(f"builder {BUILDER_VERSION}\n{text}".encode()).hexdigest()[:12]
    tag = f"{IMAGE_REPO}:{re.sub(r'[^a-z0-9.]+', '', base.split(':')[-1])}-df-{digest}"
    if not force and image_exists(client, tag):
        return tag
    t0 = time.monotonic()
    log.info("building sandbox image %s from a Dockerfile (FROM %s)", tag, base)
    client.images.build(fileobj=io.BytesIO(text.encode()), tag=tag, rm=True, pull=False)
    log.info("built sandbox image %s in %.1f s", tag, time.monotonic() - t0)
    return tag


def ensure_image(client: Any, *, image: str | None = None, method: str = "auto") -> str:
    """The tag of a usable sandbox image, built if missing.

    ``image`` (or the ``AGENTRL_SANDBOX_IMAGE`` environment variable) names an existing image
    to use as is. Otherwise ``method``: ``local`` builds from local files, ``dockerfile`` from
    the Dockerfile, ``auto`` uses the Dockerfile only when its base image is already present
    (a registry was used before) and the local build otherwise (always works offline).
    """
    image = image or os.environ.get(ENV_IMAGE)
    if image:
        if not image_exists(client, image):
            raise LookupError(
                f"sandbox image {image!r} (from image= or ${ENV_IMAGE}) does not exist; build "
                f"one with `agentrl sandbox build-image` or unset {ENV_IMAGE}."
            )
        return image
    if method not in ("auto", "local", "dockerfile"):
        raise ValueError(f"method must be auto, local or dockerfile, got {method!r}")
    if method == "dockerfile" or (method == "auto" and image_exists(client, DEFAULT_BASE)):
        return build_dockerfile_image(client)
    return build_local_image(client)


def _cmd_build_image(args: argparse.Namespace) -> int:
    from .docker_pool import docker_client

    client = docker_client()
    t0 = time.monotonic()
    if args.method == "dockerfile":
        tag = build_dockerfile_image(client, base=args.base, force=args.force)
    elif args.method == "local":
        tag = build_local_image(client, python=args.python, force=args.force)
    else:
        tag = ensure_image(client, method="auto")
    size_mb = client.images.get(tag).attrs.get("Size", 0) / 1e6
    print(f"{tag}  ({size_mb:.1f} MB, {time.monotonic() - t0:.1f} s)")
    return 0


def add_build_image_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``build-image`` to the ``agentrl sandbox`` subcommands (wired by sandboxes/cli.py)."""
    p = subparsers.add_parser(
        "build-image",
        help="build the docker sandbox image (from local files, or a Dockerfile with a registry)",
        description=(
            "Build the image the docker sandbox backend runs. 'local' (the default for auto "
            "when no base image is cached) needs no registry: it packs this machine's Python, "
            "bash and coreutils into a small root filesystem and docker-imports it. "
            "'dockerfile' builds FROM a registry image. Needs a Docker engine "
            "(DOCKER_HOST, or start one with `source .ci/docker_engine.sh && start_docker_engine`)."
        ),
    )
    p.add_argument("--method", choices=["auto", "local", "dockerfile"], default="auto")
    p.add_argument("--python", default=None, help="interpreter to pack (local method)")
    p.add_argument("--base", default=DEFAULT_BASE, help="base image (dockerfile method)")
    p.add_argument("--force", action="store_true", help="rebuild even if the tag exists")
    p.set_defaults(func=_cmd_build_image)
    return p
