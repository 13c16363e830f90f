"""The one place nbssm's kernels get their Numba decorators from.

Every kernel module imports ``njit`` and ``prange`` from here, never from numba
directly, so that the caching policy (where compiled code is stored, whether it is
still valid) and the fork policy (what a parallel kernel does in a forked child) are
decided in one module.

``njit`` takes the arguments of :func:`numba.njit` and returns an ordinary Numba
dispatcher. Two things differ from plain Numba:

Caching (``cache=True``)
    Compiled code is stored under a directory keyed by a hash of *every* source file
    in ``nbssm/_kernels`` together with the numba, llvmlite and Python versions and the
    host CPU. Numba's own cache keys only on the file that defines a function, so an
    edit to a helper that is inlined from another file (``fastmath.py``) would keep
    running stale machine code; here any kernel-file edit, or a numba upgrade, selects
    a fresh directory. The compile options (``parallel``, ``fastmath``, ...) are part of
    each entry's file name, so a serial and a parallel compilation of the same function
    never share an entry. Each file carries a SHA-256 checksum: a truncated or corrupt
    entry is ignored, recompiled and rewritten. The cache root is, in order, the
    directory named by ``NBSSM_CACHE_DIR`` (else ``$NUMBA_CACHE_DIR/nbssm`` when Numba's
    variable is set), else ``nbssm/_kernels/__pycache__``; where
    that cannot be written, a per-user cache directory (``$XDG_CACHE_HOME/nbssm`` or
    ``~/.cache/nbssm``), then a private temporary directory, then no cache (kernels
    compile in every process). Falling back past the per-user directory emits one
    ``RuntimeWarning`` per process. ``NBSSM_CACHE=0`` disables the cache.

Fork
    With Numba's OpenMP threading layer (GNU libgomp), a process forked after its
    first parallel kernel call cannot start OpenMP threads again (libgomp kills it).
    In such a child, every parallel kernel is switched, once, to a serial compilation
    of the same function (``parallel=False``, cached separately). The kernels split
    their work independently of the thread count, so the results are bitwise the same
    as in the parent. With the TBB or workqueue layers nothing changes.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import platform
import stat
import sys
import tempfile
import warnings

import numba
import numba.core.event
from numba import prange
from numba.core import caching as _caching

from .. import _config

__all__ = ["cache_directory", "cached_signatures", "in_serial_fork", "kernels", "njit", "prange"]

_KERNEL_DIR = os.path.dirname(os.path.abspath(__file__))
_MAGIC = b"NBSSM-CACHE-1\n"

# Numba's pedantic IR check warns ("variable ... is not in scope. Please report ...") when a
# parallel loop's body inlines an overload that is itself inlined (fastmath's sigmoid in the
# selective-scan backward): a check of Numba's own bookkeeping, not of the code, which compiles
# and is tested against the references. Silenced for nbssm's kernel files only (Numba reports
# it with the file's path as the module). The filter is installed at the start of every
# compile (where the warning can arise), so that a ``warnings.catch_warnings()`` block that was open when nbssm was imported
# (pytest opens one per test) does not take it away.
_IR_CHECK_MODULE = r"(.*[/\\])?nbssm[/\\.]_kernels([/\\.]|$)"


def _quiet_ir_checks() -> None:
    """Install the filter above unless it is already in :data:`warnings.filters`."""
    for action, _msg, category, module, _line in warnings.filters:
        if (action == "ignore" and category is numba.NumbaIRAssumptionWarning and module is not None
                and module.pattern == _IR_CHECK_MODULE):
            return
    warnings.filterwarnings("ignore", category=numba.NumbaIRAssumptionWarning, module=_IR_CHECK_MODULE)


class _QuietIRChecks(numba.core.event.Listener):
    def on_start(self, event) -> None:
        _quiet_ir_checks()

    def on_end(self, event) -> None:
        pass


numba.core.event.register("numba:compile", _QuietIRChecks())

# every dispatcher made by njit, with its options: (dispatcher, options, cached)
_KERNELS: list = []


# --------------------------------------------------------------------------- keys


def _options_tag(options: dict) -> str:
    """A short, stable tag of the compile options (part of every cache file name)."""
    items = []
    for key in sorted(options):
        value = options[key]
        if isinstance(value, (set, frozenset)):
            value = sorted(value)
        items.append(f"{key}={value!r}")
    return hashlib.sha256(";".join(items).encode()).hexdigest()[:10]


def compiled_features() -> set:
    """The CPU features Numba compiles for: LLVM's host features, or ``NUMBA_CPU_FEATURES``
    when set (a VM or an override can hide AVX-512 from the compiler although the CPU has it)."""
    from llvmlite import binding as ll

    try:
        feats = {k for k, v in ll.get_host_cpu_features().items() if v}
    except Exception:  # noqa: BLE001  # pragma: no cover
        feats = set()
    override = os.environ.get("NUMBA_CPU_FEATURES") or getattr(numba.config, "CPU_FEATURES", None)
    if override:
        feats = {f[1:] for f in str(override).split(",") if f.startswith("+")}
    return feats


def _cpu_description() -> str:
    try:
        from llvmlite import binding as ll

        return f"{ll.get_host_cpu_name()}:{ll.get_host_cpu_features().flatten()}"
    except Exception:  # noqa: BLE001  # pragma: no cover - llvmlite always provides these
        return platform.processor()


#: Numba settings (``NUMBA_OPT``, ``NUMBA_ENABLE_PROFILING``, ...) that change the code a
#: kernel compiles to but not Numba's own cache index: part of the cache key, so that a run
#: with one of them set (a profiling session) never leaves its code to the runs after it.
#: Measured: one ``NUMBA_ENABLE_PROFILING=1`` run left the selective scan 10-15x slower in
#: every later process until the cache was cleared.
_CODEGEN_CONFIG = ("OPT", "ENABLE_PROFILING", "DEBUGINFO_DEFAULT", "BOUNDSCHECK", "CPU_NAME", "CPU_FEATURES")


def source_key(kernel_dir: str = _KERNEL_DIR) -> str:
    """Hash of every kernel source file plus the toolchain, the host CPU and the Numba
    settings that change generated code (:data:`_CODEGEN_CONFIG`).

    Parameters
    ----------
    kernel_dir : str
        Directory whose ``*.py`` files the key covers.

    Returns
    -------
    str
        24 hexadecimal digits; the name of the cache directory.
    """
    h = hashlib.sha256()
    for name in sorted(os.listdir(kernel_dir)):
        if name.endswith(".py"):
            h.update(name.encode() + b"\0")
            with open(os.path.join(kernel_dir, name), "rb") as f:
                h.update(f.read())
            h.update(b"\0")
    import llvmlite

    for part in (numba.__version__, llvmlite.__version__, sys.version, platform.machine(), _cpu_description()):
        h.update(str(part).encode() + b"\0")
    for name in _CODEGEN_CONFIG:  # Numba settings that change the machine code of a kernel
        h.update(f"{name}={getattr(numba.config, name, None)!r}".encode() + b"\0")
    return h.hexdigest()[:24]


# --------------------------------------------------------------------------- where


def _usable_directory(path: str, private: bool = False) -> bool:
    """Whether *path* is (or can be made) a directory this process can write."""
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        if not os.path.isdir(path):
            return False
        if private:
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o022:
                return False
        tempfile.TemporaryFile(dir=path).close()
        return True
    except OSError:
        return False


def _user_cache_root() -> str | None:
    base = os.environ.get("XDG_CACHE_HOME")
    if not base:
        home = os.path.expanduser("~")
        if not home or home == "~":
            return None
        base = os.path.join(home, ".cache")
    return os.path.join(base, "nbssm")


_ROOT_UNSET = object()
_root = _ROOT_UNSET  # resolved cache directory (str) or None, once per process
_warned = False


def _warn_once(message: str) -> None:
    global _warned
    if not _warned:
        _warned = True
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def _resolve_root() -> str | None:
    if not _config.CACHE:
        return None
    key = source_key()
    explicit = _config.CACHE_DIR
    name = "NBSSM_CACHE_DIR"
    if not explicit and numba.config.CACHE_DIR:  # NUMBA_CACHE_DIR, honoured as Numba does
        explicit, name = os.path.join(numba.config.CACHE_DIR, "nbssm"), "NUMBA_CACHE_DIR"
    problem = None
    if explicit:
        if _usable_directory(os.path.join(explicit, key)):
            return os.path.join(explicit, key)
        problem = f"{name}: expected a writable directory, got {explicit!r}"
    else:
        in_tree = os.path.join(_KERNEL_DIR, "__pycache__", "nbssm-" + key)
        if _usable_directory(in_tree):
            return in_tree
    user = _user_cache_root()
    if user and _usable_directory(os.path.join(user, key)):
        if problem:
            _warn_once(f"{problem}; nbssm caches compiled kernels in {user}")
        return os.path.join(user, key)
    tmp = os.path.join(tempfile.gettempdir(), f"nbssm-cache-{os.getuid()}")
    if _usable_directory(tmp, private=True) and _usable_directory(os.path.join(tmp, key)):
        _warn_once(
            f"{problem or 'nbssm: no writable cache directory (package directory and ~/.cache)'}; "
            f"compiled kernels are cached in {tmp} (set NBSSM_CACHE_DIR to choose a directory)"
        )
        return os.path.join(tmp, key)
    _warn_once(
        f"{problem or 'nbssm: no writable cache directory'}; kernels compile in every process "
        "(set NBSSM_CACHE_DIR to a writable directory, or NBSSM_CACHE=0 to silence this)"
    )
    return None


def cache_directory() -> str | None:
    """The directory compiled kernels are cached in for this process (None: no cache)."""
    global _root
    if _root is _ROOT_UNSET:
        _root = _resolve_root()
    return _root


# --------------------------------------------------------------------------- files


class _CorruptEntry(Exception):
    pass


def _seal(payload: bytes) -> bytes:
    return _MAGIC + hashlib.sha256(payload).digest() + payload


def _unseal(blob: bytes) -> bytes:
    head = len(_MAGIC)
    if blob[:head] != _MAGIC or len(blob) < head + 32:
        raise _CorruptEntry("bad header")
    digest, payload = blob[head : head + 32], blob[head + 32 :]
    if hashlib.sha256(payload).digest() != digest:
        raise _CorruptEntry("checksum mismatch")
    return payload


class _CheckedIndexDataCacheFile(_caching.IndexDataCacheFile):
    """Numba's index + data files, each sealed with a checksum; damage reads as a miss."""

    def load(self, key):
        try:
            overloads = self._load_index()
            name = overloads.get(key)
            if name is None:
                return None
            return self._load_data(name)
        except Exception:  # noqa: BLE001
            return None

    def _load_index(self):
        try:
            with open(self._index_path, "rb") as f:
                blob = f.read()
        except FileNotFoundError:
            return {}
        try:
            version, stamp, overloads = pickle.loads(_unseal(blob))
        except Exception:  # noqa: BLE001
            return {}  # damaged index: start afresh (it is rewritten on the next save)
        if version != self._version or stamp != self._source_stamp or not isinstance(overloads, dict):
            return {}
        return overloads

    def _save_index(self, overloads):
        blob = _seal(self._dump((self._version, self._source_stamp, overloads)))
        with self._open_for_write(self._index_path) as f:
            f.write(blob)

    def _load_data(self, name):
        with open(self._data_path(name), "rb") as f:
            blob = f.read()
        return pickle.loads(_unseal(blob))

    def _save_data(self, name, data):
        blob = _seal(self._dump(data))
        with self._open_for_write(self._data_path(name)) as f:
            f.write(blob)


class _Locator(_caching._CacheLocator):
    def __init__(self, py_func, directory):
        self._py_file = py_func.__code__.co_filename
        self._lineno = py_func.__code__.co_firstlineno
        self._path = directory

    def get_cache_path(self):
        return self._path

    def get_source_stamp(self):
        return os.path.basename(self._path)

    def get_disambiguator(self):
        return str(self._lineno)


class _Impl(_caching.CompileResultCacheImpl):
    def __init__(self, py_func, directory, tag):  # no super(): the locator is fixed
        self._lineno = py_func.__code__.co_firstlineno
        self._locator = _Locator(py_func, directory)
        modname = os.path.splitext(os.path.basename(py_func.__code__.co_filename))[0]
        fullname = f"{modname}.{py_func.__qualname__}-{tag}"
        self._filename_base = self.get_filename_base(fullname, getattr(sys, "abiflags", ""))


class _DiskCache(_caching.Cache):
    _impl_class = _Impl

    def __init__(self, py_func, directory, tag):
        self._name = repr(py_func)
        self._py_func = py_func
        self._impl = _Impl(py_func, directory, tag)
        self._cache_path = directory
        self._cache_file = _CheckedIndexDataCacheFile(
            cache_path=directory, filename_base=self._impl.filename_base, source_stamp=self._impl.locator.get_source_stamp()
        )
        self.enable()


class KernelCache(_caching._Cache):
    """Numba cache for one nbssm kernel: lazy, fault tolerant, keyed on all kernel sources.

    Parameters
    ----------
    py_func : function
        The kernel's Python function.
    options : dict
        Its compile options (they select the cache entry).
    """

    def __init__(self, py_func, options):
        self._py_func = py_func
        self.tag = _options_tag(options)
        self._disk = None
        self._enabled = True

    def _get(self):
        if not self._enabled:
            return None
        if self._disk is None:
            root = cache_directory()
            if root is None:
                self._enabled = False
                return None
            self._disk = _DiskCache(self._py_func, root, self.tag)
        return self._disk

    @property
    def cache_path(self):
        disk = self._get()
        return disk.cache_path if disk is not None else None

    @property
    def filename_base(self):
        disk = self._get()
        return disk._impl.filename_base if disk is not None else None

    def load_overload(self, sig, target_context):
        disk = self._get()
        if disk is None:
            return None
        try:
            return disk.load_overload(sig, target_context)
        except Exception:  # noqa: BLE001
            return None  # unreadable entry: compile again (and overwrite it)

    def save_overload(self, sig, data):
        disk = self._get()
        if disk is None:
            return
        try:
            disk.save_overload(sig, data)
        except Exception as exc:  # noqa: BLE001
            self._enabled = False
            _warn_once(f"nbssm: could not write the kernel cache in {disk.cache_path} ({exc}); continuing without it")

    def enable(self):
        self._enabled = True

    def disable(self):
        self._enabled = False

    def flush(self):
        disk = self._get()
        if disk is not None:
            try:
                disk.flush()
            except OSError:
                pass


# --------------------------------------------------------------------------- njit


def _make(func, sigs, cache, options):
    disp = numba.njit(*sigs, **options)(func) if sigs else numba.njit(**options)(func)
    if not hasattr(disp, "py_func"):  # NUMBA_DISABLE_JIT=1: the plain Python function
        return disp
    if cache:
        disp._cache = KernelCache(disp.py_func, options)
    _KERNELS.append((disp, dict(options), bool(cache)))
    return disp


def njit(*args, **options):
    """:func:`numba.njit` with nbssm's cache and fork policy (same arguments).

    Returns
    -------
    numba.core.registry.CPUDispatcher
        Or a decorator returning one, as :func:`numba.njit` does.
    """
    cache = options.pop("cache", False)
    if len(args) == 1 and callable(args[0]) and not isinstance(args[0], (str, list, tuple)):
        return _make(args[0], (), cache, options)

    def decorate(func):
        return _make(func, args, cache, options)

    return decorate


def kernels():
    """Every dispatcher made by :func:`njit`, with its options: list of (dispatcher, options, cached)."""
    return list(_KERNELS)


def cached_signatures(dispatcher) -> list[str] | None:
    """The argument types the on-disk cache holds compiled code of ``dispatcher`` for, as text.

    Cheap: reads one small index file, compiles and loads nothing. An empty list means
    the first call with any argument types compiles; None means there is no cache (the
    kernel is not cached, or caching is off or impossible here).
    """
    cache = getattr(dispatcher, "_cache", None)
    if not isinstance(cache, KernelCache):
        return None
    disk = cache._get()
    if disk is None:
        return None
    try:
        overloads = disk._cache_file._load_index()
    except Exception:  # noqa: BLE001  # a damaged index reads as empty, as when loading
        return []
    return [str(key[0]) for key in overloads]


# --------------------------------------------------------------------------- fork

_serial = False


def in_serial_fork() -> bool:
    """Whether this process is a fork in which parallel kernels run serially."""
    return _serial


def _needs_serial_after_fork() -> bool:
    from numba.np.ufunc import parallel

    if not parallel._is_initialized or parallel._threading_layer != "omp":
        return False
    try:
        from numba.np.ufunc import omppool

        vendor = getattr(omppool, "openmp_vendor", "GNU")
    except Exception:  # noqa: BLE001  # pragma: no cover
        vendor = "GNU"
    return vendor != "Intel"


def _switch_to_serial():
    """Recompile (lazily) every parallel kernel, and every kernel calling one, as serial."""
    global _serial
    _serial = True
    by_id = {id(d): (d, o, c) for d, o, c in _KERNELS}
    switch = {id(d) for d, o, c in _KERNELS if o.get("parallel")}
    changed = True
    while changed:  # callers of switched kernels embed their code: switch them too
        changed = False
        for d, o, c in _KERNELS:
            if id(d) in switch:
                continue
            glb = d.py_func.__globals__
            if any(id(glb.get(name)) in switch for name in d.py_func.__code__.co_names):
                switch.add(id(d))
                changed = True
    for key in switch:
        disp, options, cached = by_id[key]
        options = dict(options, parallel=False, _forked_child=True)
        disp.targetoptions["parallel"] = False
        if cached:
            disp._cache = KernelCache(disp.py_func, options)
        disp._reset_overloads()


def _after_fork_in_child():
    try:
        if not _serial and _needs_serial_after_fork():
            _switch_to_serial()
    except Exception as exc:  # noqa: BLE001  # pragma: no cover - never break a fork
        warnings.warn(f"nbssm: could not prepare kernels for this forked process ({exc})", RuntimeWarning)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
