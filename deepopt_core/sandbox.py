"""The sandbox of every child process that opens an uploaded model: inspection, jobs and `auto` trials.

Untrusted model files are refused at upload when they could run code (:mod:`deepopt_core.formats.detect`), and
this module is the defence for the day a bypass exists. A child runs as::

    python -m deepopt_core.sandbox --scratch DIR [--read PATH ...] -- deepopt_core.cli inspect PATH

with the environment of :func:`child_env` (an allow-list: no API keys, admin key, webhook secrets, database or
broker URL, cloud credentials), and confines itself before it imports torch or reads the model (:func:`confine`):

- network: its own network namespace where the kernel lets it make one, seccomp refusing ``socket(2)`` for
  every address family and ``io_uring``, and Landlock refusing TCP bind/connect (ABI 4+);
- filesystem: Landlock; the scratch folder is the only writable place, and reading is limited to the Python
  installation, system libraries, ``/proc``, ``/sys``, a few ``/dev`` and ``/etc`` entries and the paths the
  parent names (the inputs it copied for this child), so the data folder (every tenant's blobs, the SQLite
  database) is out of reach;
- processes: no new privileges, every capability dropped, no ptrace of or signal to processes outside the
  sandbox (Landlock scopes, ABI 6+), seccomp refusing ptrace, process_vm_*, bpf, mount, namespaces, kernel
  modules and keyrings.

What could not be enforced on this kernel is written to ``<scratch>/sandbox.json`` and logged; with ``--strict``
(``DEEPOPT_SANDBOX=strict``) the child refuses to run unless seccomp and Landlock are both in force.

Standard library only: the API spawns inspection children and never imports torch.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import json
import logging
import os
import platform
import resource
import runpy
import signal
import stat
import struct
import sys
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

log = logging.getLogger("deepopt.sandbox")

REPORT_NAME = "sandbox.json"
# Environment variables a child may inherit: threading and CPU-kernel settings, locale, library paths, GPUs.
INHERITED_ENV = (
    "PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "LD_LIBRARY_PATH",
    "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE",
    "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER",
)
# Read-only system locations a Python + torch process needs; missing ones are skipped.
SYSTEM_READ = ("/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin", "/proc", "/sys")
ETC_READ = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime", "/etc/passwd",
            "/etc/group", "/etc/nsswitch.conf", "/etc/host.conf", "/etc/mime.types", "/etc/os-release")
DEV_READ = ("/dev/urandom", "/dev/random")
DEV_WRITE = ("/dev/null", "/dev/zero", "/dev/full", "/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools",
             "/dev/nvidia0", "/dev/nvidia1", "/dev/nvidia2", "/dev/nvidia3", "/dev/nvidia4", "/dev/nvidia5",
             "/dev/nvidia6", "/dev/nvidia7")


def child_env(scratch: Path, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The whole environment of a sandboxed child: an allow-list of `environ`, plus caches in `scratch`.

    Nothing else of the parent's environment passes, so no secret the API or worker holds reaches the child.
    """
    environ = os.environ if environ is None else environ
    env = {name: environ[name] for name in INHERITED_ENV if name in environ}
    env.setdefault("PATH", "/usr/bin:/bin")
    env.update({
        "HOME": str(scratch / "home"), "TMPDIR": str(scratch / "tmp"), "XDG_CACHE_HOME": str(scratch / "cache"),
        "HF_HOME": str(scratch / "cache" / "huggingface"), "MPLCONFIGDIR": str(scratch / "cache" / "matplotlib"),
        "TORCHINDUCTOR_CACHE_DIR": str(scratch / "cache" / "inductor"),
        "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONNOUSERSITE": "1",
        # torch.load(weights_only=False) anywhere in a library becomes a restricted load.
        "TORCH_FORCE_WEIGHTS_ONLY_LOAD": "1",
        # The child's cwd is its scratch folder; this finds the core package without reading the project root.
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
    })  # fmt: skip
    return env


def child_command(args: Sequence[str], *, scratch: Path, readable: Iterable[Path] = (), strict: bool = False,
                  memory_limit: int | None = None, module: str | None = "deepopt_core.cli") -> list[str]:
    """The argv that runs `python -m <module> <args>` inside the sandbox (`module` None: confine, report, exit).

    Run it with ``env=child_env(scratch), cwd=scratch``. `memory_limit` caps the child's address space.
    """
    command = [sys.executable, "-m", "deepopt_core.sandbox", "--scratch", str(Path(scratch).resolve())]
    for path in readable:
        command += ["--read", str(path)]
    if strict:
        command.append("--strict")
    if memory_limit:
        command += ["--memory-limit", str(int(memory_limit))]
    return [*command, "--probe"] if module is None else [*command, "--", module, *args]


def prepare_scratch(scratch: Path) -> None:
    """Create the scratch folder and the cache folders :func:`child_env` points into."""
    for sub in ("home", "tmp", "cache"):
        (scratch / sub).mkdir(parents=True, exist_ok=True)


def child_output(path: str | Path, root: Path) -> Path:
    """`path`, a file a sandboxed child says it wrote, checked to be a regular file inside `root` (its scratch
    folder) that no link leads out of: what a parent stores or uploads from a child is never anything else.

    Raises:
        PermissionError: the path leaves `root`, or is a link, a folder or a special file.
    """
    root = Path(root).resolve()
    candidate = Path(path) if Path(path).is_absolute() else root / path
    resolved = candidate.resolve()
    if not resolved.is_relative_to(root) or candidate.absolute() != resolved:
        raise PermissionError(f"{path}: outside the child's folder, or reached through a link")
    mode = os.lstat(resolved).st_mode
    if not stat.S_ISREG(mode):
        raise PermissionError(f"{path}: not a regular file")
    return resolved


@dataclass
class Confinement:
    """What a child enforced on itself; ``missing`` names each layer this kernel did not allow."""

    network_namespace: bool = False
    seccomp: bool = False
    landlock_abi: int = 0
    landlock_network: bool = False
    landlock_scopes: bool = False
    no_new_privs: bool = False
    capabilities_dropped: bool = False
    missing: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """seccomp and Landlock both in force (the network namespace is a third wall, not required)."""
        return self.seccomp and self.landlock_abi > 0


# ---------------------------------------------------------------------------------------------------------------
# Linux interfaces (ctypes: the standard library has none of these)
# ---------------------------------------------------------------------------------------------------------------

_LIBC = ctypes.CDLL(None, use_errno=True)
_LIBC.syscall.restype = ctypes.c_long
_MACHINE = platform.machine()
# Syscall numbers: x86_64, and the generic table of aarch64.
_NR = {
    "x86_64": {"landlock_create_ruleset": 444, "landlock_add_rule": 445, "landlock_restrict_self": 446,
               "capset": 126},
    "aarch64": {"landlock_create_ruleset": 444, "landlock_add_rule": 445, "landlock_restrict_self": 446,
                "capset": 91},
}.get(_MACHINE, {})
_DENIED_SYSCALLS = {
    "x86_64": {"socket": 41, "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311, "bpf": 321,
               "mount": 165, "umount2": 166, "pivot_root": 155, "chroot": 161, "setns": 308, "unshare": 272,
               "kexec_load": 246, "init_module": 175, "finit_module": 313, "delete_module": 176, "add_key": 248,
               "request_key": 249, "keyctl": 250, "userfaultfd": 323, "open_by_handle_at": 304,
               "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427, "perf_event_open": 298},
    "aarch64": {"socket": 198, "ptrace": 117, "process_vm_readv": 270, "process_vm_writev": 271, "bpf": 280,
                "mount": 40, "umount2": 39, "pivot_root": 41, "chroot": 51, "setns": 268, "unshare": 97,
                "kexec_load": 104, "init_module": 105, "finit_module": 273, "delete_module": 106, "add_key": 217,
                "request_key": 218, "keyctl": 219, "userfaultfd": 282, "open_by_handle_at": 265,
                "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427, "perf_event_open": 241},
}.get(_MACHINE, {})
_AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}.get(_MACHINE)

_CLONE_NEWNET = 0x40000000
_CLONE_NEWUSER = 0x10000000
_PR_SET_NO_NEW_PRIVS = 38
_PR_CAPBSET_DROP = 24
_PR_SET_SECCOMP = 22
_PR_SET_DUMPABLE = 4
_PR_SET_PDEATHSIG = 1
_SECCOMP_MODE_FILTER = 2

# Landlock rights by ABI version (include/uapi/linux/landlock.h).
_FS_EXECUTE, _FS_WRITE_FILE, _FS_READ_FILE, _FS_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_FS_ABI1 = (1 << 13) - 1
_FS_REFER, _FS_TRUNCATE, _FS_IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
_FILE_RIGHTS = _FS_EXECUTE | _FS_WRITE_FILE | _FS_READ_FILE | _FS_TRUNCATE | _FS_IOCTL_DEV
_NET_BIND_TCP, _NET_CONNECT_TCP = 1, 2
_SCOPE_ABSTRACT_UNIX_SOCKET, _SCOPE_SIGNAL = 1, 2
_RULE_PATH_BENEATH = 1


def _check(result: int, what: str) -> int:
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}")
    return result


def _enter_network_namespace() -> bool:
    """A network namespace of its own (only a loopback device, down). Root can make one directly; another user
    through a user namespace, where the kernel allows unprivileged ones."""
    if _LIBC.unshare(_CLONE_NEWNET) == 0:
        return True
    uid, gid = os.getuid(), os.getgid()
    if _LIBC.unshare(_CLONE_NEWUSER | _CLONE_NEWNET) != 0:
        return False
    try:
        Path("/proc/self/setgroups").write_text("deny")
        Path("/proc/self/uid_map").write_text(f"{uid} {uid} 1")
        Path("/proc/self/gid_map").write_text(f"{gid} {gid} 1")
    except OSError:
        pass  # the namespace holds even when the ids stay unmapped
    return True


def _drop_capabilities() -> bool:
    """Empty the bounding set and the effective, permitted and inheritable sets (a root child keeps uid 0 but
    no privilege: Landlock, not file ownership, decides what it may open)."""
    for capability in range(64):
        if _LIBC.prctl(_PR_CAPBSET_DROP, capability, 0, 0, 0) != 0 and ctypes.get_errno() == errno.EINVAL:
            break  # past the last capability this kernel knows
    if "capset" not in _NR:
        return False
    header = struct.pack("Ii", 0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    data = bytes(24)  # two {effective, permitted, inheritable} u32 triples, all zero
    return _LIBC.syscall(_NR["capset"], ctypes.c_char_p(header), ctypes.c_char_p(data)) == 0


def landlock_abi() -> int:
    """The Landlock ABI version of this kernel, 0 where it has none."""
    if "landlock_create_ruleset" not in _NR:
        return 0
    version = _LIBC.syscall(_NR["landlock_create_ruleset"], None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    return max(int(version), 0)


def _landlock(scratch: Path, readable: Iterable[Path], writable_devices: Iterable[str], abi: int) -> tuple[bool, bool]:
    """Restrict this process to reading `readable` and writing `scratch`. Returns (network, scopes) enforced."""
    handled_fs = _FS_ABI1 | (_FS_REFER if abi >= 2 else 0) | (_FS_TRUNCATE if abi >= 3 else 0) | (
        _FS_IOCTL_DEV if abi >= 5 else 0)
    handled_net = _NET_BIND_TCP | _NET_CONNECT_TCP if abi >= 4 else 0
    scoped = _SCOPE_ABSTRACT_UNIX_SOCKET | _SCOPE_SIGNAL if abi >= 6 else 0
    attr = struct.pack("QQQ", handled_fs, handled_net, scoped)
    size = 8 if abi < 4 else 16 if abi < 6 else 24
    ruleset = _check(_LIBC.syscall(_NR["landlock_create_ruleset"], ctypes.c_char_p(attr), ctypes.c_size_t(size),
                                   ctypes.c_uint32(0)), "landlock_create_ruleset")
    read = _FS_EXECUTE | _FS_READ_FILE | _FS_READ_DIR

    def allow(path: Path, rights: int) -> None:
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            return  # absent here (another distribution, no GPU)
        try:
            if not os.path.isdir(path):
                rights &= _FILE_RIGHTS
            rule = struct.pack("=Qi", rights & handled_fs, fd)
            _check(_LIBC.syscall(_NR["landlock_add_rule"], ctypes.c_int(ruleset), ctypes.c_int(_RULE_PATH_BENEATH),
                                 ctypes.c_char_p(rule), ctypes.c_uint32(0)), f"landlock_add_rule {path}")
        finally:
            os.close(fd)

    try:
        for path in readable:
            allow(Path(path), read)
        for device in writable_devices:
            allow(Path(device), read | _FS_WRITE_FILE | _FS_TRUNCATE | _FS_IOCTL_DEV)
        allow(scratch, handled_fs)
        _check(_LIBC.syscall(_NR["landlock_restrict_self"], ctypes.c_int(ruleset), ctypes.c_uint32(0)),
               "landlock_restrict_self")
    finally:
        os.close(ruleset)
    return bool(handled_net), bool(scoped)


def _seccomp() -> bool:
    """A seccomp filter returning EPERM for the syscalls in `_DENIED_SYSCALLS` (socket for every family:
    a path socket such as PostgreSQL's or Redis's is as much a way out as TCP)."""
    if not _DENIED_SYSCALLS or _AUDIT_ARCH is None:
        return False
    ld_abs, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06
    allow, deny = 0x7FFF0000, 0x00050000 | errno.EPERM
    kill = 0x80000000
    numbers = sorted(set(_DENIED_SYSCALLS.values()))
    program = [(ld_abs, 0, 0, 4), (jeq, 1, 0, _AUDIT_ARCH), (ret, 0, 0, kill), (ld_abs, 0, 0, 0)]
    if _MACHINE == "x86_64":  # the x32 ABI numbers (bit 30) would bypass the table
        program.append((jge, len(numbers) + 1, 0, 0x40000000))
    for index, number in enumerate(numbers):
        program.append((jeq, len(numbers) - index, 0, number))
    program += [(ret, 0, 0, allow), (ret, 0, 0, deny)]
    filters = b"".join(struct.pack("HBBI", *instruction) for instruction in program)
    buffer = ctypes.create_string_buffer(filters)
    fprog = struct.pack("HxxxxxxP", len(program), ctypes.addressof(buffer))
    return _LIBC.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.c_char_p(fprog), 0, 0) == 0


def python_paths() -> list[Path]:
    """The Python installation and the packages this child imports, without the project folder around them
    (which may hold the data folder)."""
    import sysconfig

    paths = {Path(sys.prefix), Path(sys.base_prefix), Path(sys.exec_prefix), Path(sys.base_exec_prefix),
             Path(__file__).resolve().parent, Path(sys.executable).resolve().parent}
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        paths.add(Path(sysconfig.get_paths()[key]))
    return sorted(paths)


def confine(scratch: Path, readable: Iterable[Path] = ()) -> Confinement:
    """Confine this process (and every thread and child it later starts) as the module docstring says.

    Call it while the process is single-threaded, before anything untrusted is read.
    """
    if threading.active_count() != 1:
        raise RuntimeError("confine() must run before any thread starts")
    report = Confinement()
    scratch = Path(scratch).resolve()
    report.network_namespace = _enter_network_namespace()
    report.no_new_privs = _LIBC.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0
    report.capabilities_dropped = _drop_capabilities()
    _LIBC.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)  # nothing outside may read this process's memory either
    abi = landlock_abi()
    if abi and report.no_new_privs:
        paths = [*python_paths(), *map(Path, SYSTEM_READ), *map(Path, ETC_READ), *map(Path, DEV_READ),
                 *(Path(p) for p in readable)]
        try:
            report.landlock_network, report.landlock_scopes = _landlock(scratch, paths, DEV_WRITE, abi)
            report.landlock_abi = abi
        except OSError as exc:
            log.warning("Landlock could not be enforced: %s", exc)
    report.seccomp = report.no_new_privs and _seccomp()
    for name, enforced in (("network namespace", report.network_namespace), ("seccomp", report.seccomp),
                           ("landlock filesystem", report.landlock_abi > 0),
                           ("landlock network (ABI 4)", report.landlock_network),
                           ("landlock process scopes (ABI 6)", report.landlock_scopes),
                           ("capabilities dropped", report.capabilities_dropped)):
        if not enforced:
            report.missing.append(name)
    return report


def probe() -> Confinement:
    """What a child would enforce on this machine (confines a throwaway child process)."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory(prefix="deepopt-sandbox-probe-") as folder:
        scratch = Path(folder)
        prepare_scratch(scratch)
        subprocess.run(child_command([], scratch=scratch, module=None),
                       env=child_env(scratch), cwd=scratch, capture_output=True, timeout=60, check=False)
        report = scratch / REPORT_NAME
        if not report.exists():
            return Confinement(missing=["the probe child did not start"])
        return Confinement(**json.loads(report.read_text()))


def main(argv: list[str] | None = None) -> int:
    """``python -m deepopt_core.sandbox --scratch DIR [--read PATH ...] [--strict] (--probe | -- MODULE ARGS)``."""
    parser = argparse.ArgumentParser(prog="python -m deepopt_core.sandbox")
    parser.add_argument("--scratch", required=True, type=Path)
    parser.add_argument("--read", action="append", default=[], type=Path)
    parser.add_argument("--strict", action="store_true")
    parser.add_argument("--memory-limit", type=int, default=None, help="address-space limit (RLIMIT_AS), bytes")
    parser.add_argument("--probe", action="store_true", help="confine, write the report and exit")
    parser.add_argument("module", nargs="?")
    parser.add_argument("args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: "
                        "%(message)s")
    # The child must not outlive its parent (a worker killed with SIGKILL, an API process that stops).
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if args.memory_limit:
        resource.setrlimit(resource.RLIMIT_AS, (args.memory_limit, args.memory_limit))
    report = confine(args.scratch, args.read)
    (args.scratch / REPORT_NAME).write_text(json.dumps(asdict(report)))
    if report.missing:
        log.warning("sandbox: not enforced on this machine: %s", ", ".join(report.missing))
    if args.strict and not report.complete:
        log.error("sandbox: DEEPOPT_SANDBOX=strict and seccomp or Landlock is missing; refusing to run")
        return 4
    if args.probe or not args.module:
        return 0
    sys.argv = [args.module, *args.args]
    if args.module.endswith(".py"):  # a script (the tests' stand-in for a loader that runs a model's code)
        runpy.run_path(args.module, run_name="__main__")
    else:
        runpy.run_module(args.module, run_name="__main__", alter_sys=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
