"""A small seccomp-BPF deny list for the bwrap backend, compiled in pure Python.

bubblewrap loads a classic-BPF program from a file descriptor (``--seccomp FD``). This module
builds one: every system call runs as usual except a list of kernel-attack-surface and escape
calls that return ``EPERM`` (or ``ENOSYS`` for ``clone3``, so libc falls back to ``clone``,
whose flags can be checked):

- namespaces and mounts: ``mount``, ``umount2``, ``pivot_root``, ``chroot``, ``unshare``,
  ``setns``, ``clone`` with any ``CLONE_NEW*`` flag, the new mount API (``fsopen``...);
- kernel objects shared across sandboxes or with the host: ``keyctl``, ``add_key``,
  ``request_key`` (the per-uid keyring), ``bpf``, ``perf_event_open``, ``userfaultfd``,
  ``io_uring_*``;
- debugging other processes: ``ptrace``, ``process_vm_readv/writev``;
- host administration: ``reboot``, ``kexec_*``, ``*_module``, ``swapon/off``, ``syslog``,
  ``acct``, ``quotactl``, ``iopl/ioperm``, ``sethostname``, ``vhangup``,
  ``open_by_handle_at`` (the classic container escape);
- ``ioctl(TIOCSTI)`` and ``ioctl(TIOCLINUX)`` (typing into a terminal).

32-bit (``int 0x80``) and x32 system calls are refused entirely. Only x86_64 has a table:
on other architectures :func:`build_filter` returns None and the backend runs without the
filter (reported by ``health()``); namespaces, dropped capabilities and ``--disable-userns``
still apply. This is a deny list, not an allow list: a new, unlisted kernel interface is
reachable. Standard library only.
"""

from __future__ import annotations

import errno
import platform
import struct

# classic BPF opcodes
_LD_W_ABS = 0x20
_JEQ_K = 0x15
_JGE_K = 0x35
_JSET_K = 0x45
_RET_K = 0x06

_RET_ALLOW = 0x7FFF0000
_RET_ERRNO = 0x00050000

_AUDIT_ARCH_X86_64 = 0xC000003E
_X32_BIT = 0x40000000

# x86_64 numbers (checked against asm/unistd_64.h).
DENIED_X86_64 = {
    "ptrace": 101, "syslog": 103, "uselib": 134, "vhangup": 153, "pivot_root": 155,
    "chroot": 161, "acct": 163, "mount": 165, "umount2": 166, "swapon": 167, "swapoff": 168,
    "reboot": 169, "sethostname": 170, "setdomainname": 171, "iopl": 172, "ioperm": 173,
    "init_module": 175, "delete_module": 176, "quotactl": 179, "lookup_dcookie": 212,
    "kexec_load": 246, "add_key": 248, "request_key": 249, "keyctl": 250, "unshare": 272,
    "perf_event_open": 298, "name_to_handle_at": 303, "open_by_handle_at": 304, "setns": 308,
    "process_vm_readv": 310, "process_vm_writev": 311, "finit_module": 313,
    "kexec_file_load": 320, "bpf": 321, "userfaultfd": 323, "io_uring_setup": 425,
    "io_uring_enter": 426, "io_uring_register": 427, "open_tree": 428, "move_mount": 429,
    "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433, "mount_setattr": 442,
}
_NR_CLONE, _NR_CLONE3, _NR_IOCTL = 56, 435, 16
# CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET (not NEWTIME: in
# clone() the low byte is the exit signal).
_CLONE_NEW_MASK = 0x7E020000
_TIOCSTI, _TIOCLINUX = 0x5412, 0x541C

# struct seccomp_data offsets
_OFF_NR, _OFF_ARCH = 0, 4


def _arg_lo(i: int) -> int:
    return 16 + 8 * i  # low 32 bits of args[i] (little-endian)


def _insn(code: int, jt: int = 0, jf: int = 0, k: int = 0) -> bytes:
    return struct.pack("<HBBI", code, jt, jf, k & 0xFFFFFFFF)


def build_filter(machine: str | None = None) -> bytes | None:
    """The BPF program (bytes of ``struct sock_filter[]``) or None if the arch has no table."""
    machine = machine or platform.machine()
    if machine not in ("x86_64", "amd64", "AMD64"):
        return None
    eperm = _RET_ERRNO | errno.EPERM
    prog = [
        _insn(_LD_W_ABS, k=_OFF_ARCH),
        _insn(_JEQ_K, 1, 0, _AUDIT_ARCH_X86_64),
        _insn(_RET_K, k=_RET_ERRNO | errno.ENOSYS),  # i386 syscalls via int 0x80
        _insn(_LD_W_ABS, k=_OFF_NR),
        _insn(_JGE_K, 0, 1, _X32_BIT),
        _insn(_RET_K, k=_RET_ERRNO | errno.ENOSYS),  # x32 ABI
    ]
    for nr in sorted(DENIED_X86_64.values()):
        prog += [_insn(_JEQ_K, 0, 1, nr), _insn(_RET_K, k=eperm)]
    prog += [_insn(_JEQ_K, 0, 1, _NR_CLONE3), _insn(_RET_K, k=_RET_ERRNO | errno.ENOSYS)]
    # clone: refuse namespace flags.
    prog += [
        _insn(_JEQ_K, 0, 4, _NR_CLONE),
        _insn(_LD_W_ABS, k=_arg_lo(0)),
        _insn(_JSET_K, 0, 1, _CLONE_NEW_MASK),
        _insn(_RET_K, k=eperm),
        _insn(_RET_K, k=_RET_ALLOW),
    ]
    # ioctl: refuse TIOCSTI / TIOCLINUX.
    prog += [
        _insn(_JEQ_K, 0, 4, _NR_IOCTL),
        _insn(_LD_W_ABS, k=_arg_lo(1)),
        _insn(_JEQ_K, 1, 0, _TIOCSTI),
        _insn(_JEQ_K, 0, 1, _TIOCLINUX),
        _insn(_RET_K, k=eperm),
    ]
    prog.append(_insn(_RET_K, k=_RET_ALLOW))
    return b"".join(prog)


def denied_syscalls() -> list[str]:
    """Names the filter refuses (for health reports and the self-test's records)."""
    return sorted([*DENIED_X86_64, "clone3 (ENOSYS)", "clone(CLONE_NEW*)", "ioctl(TIOCSTI|TIOCLINUX)"])
