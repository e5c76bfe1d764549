"""Load PyTorch(-Lightning) checkpoints without running any code from the file.

A ``torch.save`` file is a pickle (inside a zip, or the older single-stream format) whose
tensors are rebuilt by ``torch._utils._rebuild_tensor_v2`` & co. from storages that the pickle
references by *persistent id*. Lightning checkpoints also pickle Python objects (callback
classes as dict keys, ``argparse.Namespace`` or ``AttributeDict`` hyper-parameters, numpy
scalars). ``torch.load(weights_only=True)`` refuses those; ``weights_only=False`` imports and
calls whatever the pickle names, which is arbitrary code execution.

``safe_load`` runs torch's own loader (zip/legacy containers, storages, ``map_location``) with
the restricted unpickler below as its ``pickle_module``. Every global the pickle names goes
through :meth:`RestrictedUnpickler.find_class`, which

* returns the real object only for an allowlist: torch's tensor rebuild functions,
  ``torch.Size``/``torch.device``/dtypes/storage types, ``collections.OrderedDict``, plain
  containers (``set``, ``frozenset``, ``bytearray``, ``complex``, ``slice``) and a
  latin-1-only ``_codecs.encode`` (how protocol 2 stores ``bytes``);
* refuses (``UnsafeCheckpointError``) any global of a module that exists to run code or
  touch the system (``builtins``, ``os``/``posix``, ``subprocess``, ``importlib``, ...,
  and every ``torch`` global outside the allowlist, e.g. ``torch.load``);
* turns every other global into an inert :class:`Placeholder` subclass *without importing
  its module*: calling it, building it or filling it (``SETITEMS``/``APPENDS``) only
  records the arguments as data.

So the only callables the file can reach are the allowlisted tensor/container builders.
TorchScript archives (which ``torch.load`` would hand to ``torch.jit.load``) are refused.
"""

from __future__ import annotations

import _compat_pickle
import collections
import os
import pickle
import sys
import zipfile
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "safe_load",
    "describe_non_checkpoint",
    "NotACheckpointError",
    "Placeholder",
    "UnsafeCheckpointError",
    "Unpickler",
    "load",
]


class UnsafeCheckpointError(pickle.UnpicklingError):
    """The checkpoint references a global that could run code; nothing was executed."""


def _latin1_encode(obj: str, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` restricted to the latin-1 codec (pickle protocol 2 stores bytes so)."""
    if encoding not in ("latin1", "latin-1") or not isinstance(obj, str):
        raise UnsafeCheckpointError(f"_codecs.encode with codec {encoding!r} is not allowed (only latin1)")
    return obj.encode("latin1")


def _allowed_globals() -> dict[tuple[str, str], Any]:
    rebuilders = [
        "_rebuild_tensor",
        "_rebuild_tensor_v2",
        "_rebuild_tensor_v3",
        "_rebuild_parameter",
        "_rebuild_parameter_with_state",
        "_rebuild_meta_tensor_no_storage",
    ]
    allowed = {
        ("torch._utils", name): getattr(torch._utils, name) for name in rebuilders if hasattr(torch._utils, name)
    }
    allowed.update(
        {
            ("torch._tensor", "_rebuild_from_type_v2"): torch._tensor._rebuild_from_type_v2,
            ("torch.serialization", "_get_layout"): torch.serialization._get_layout,
            ("torch", "Size"): torch.Size,
            ("torch", "device"): torch.device,
            ("torch", "Tensor"): torch.Tensor,
            ("torch", "UntypedStorage"): torch.UntypedStorage,
            ("torch.nn.parameter", "Parameter"): torch.nn.Parameter,
            ("collections", "OrderedDict"): collections.OrderedDict,
            ("builtins", "set"): set,
            ("builtins", "frozenset"): frozenset,
            ("builtins", "bytearray"): bytearray,
            ("builtins", "complex"): complex,
            ("builtins", "slice"): slice,
            ("_codecs", "encode"): _latin1_encode,
        }
    )
    return allowed


_ALLOWED = _allowed_globals()

# Modules whose globals exist to execute code or reach the system: a checkpoint naming one of
# them is refused outright (matched on the top-level package name).
_REFUSED_MODULES = frozenset(
    {
        "builtins",
        "__builtin__",
        "os",
        "posix",
        "nt",
        "sys",
        "subprocess",
        "_posixsubprocess",
        "importlib",
        "runpy",
        "shutil",
        "socket",
        "ctypes",
        "pty",
        "code",
        "codeop",
        "marshal",
        "pickle",
        "_pickle",
        "dill",
        "cloudpickle",
        "copyreg",
        "types",
        "operator",
        "functools",
        "io",
        "_io",
        "pdb",
        "bdb",
        "webbrowser",
        "multiprocessing",
        "signal",
        "asyncio",
        "threading",
        "_thread",
        "timeit",
        "platform",
        "inspect",
        "ast",
        "gc",
        "pkgutil",
        "zipimport",
        "site",
        "tempfile",
        "glob",
        "urllib",
        "http",
        "ftplib",
        "smtplib",
        "ssl",
        "mmap",
        "fcntl",
        "resource",
        "sqlite3",
        "shelve",
        "dbm",
        "tarfile",
        "zipfile",
        "pip",
        "setuptools",
        "distutils",
        "ensurepip",
        "compileall",
        "py_compile",
        "torch",
    }
)


class Placeholder:
    """Inert stand-in for an object whose class/function the checkpoint names.

    The named module is never imported. ``Placeholder`` subclasses are created per global
    (``qualname`` gives the original ``module.name``); an instance keeps what the pickle fed
    it: ``args`` (constructor/reduce arguments), ``state`` (``BUILD``), ``items``
    (``SETITEMS``, e.g. for dict subclasses) and ``elements`` (``APPENDS``).
    """

    qualname: str = "?"

    def __new__(cls, *args, **kwargs):
        obj = super().__new__(cls)
        obj.args, obj.kwargs, obj.state, obj.items, obj.elements = args, kwargs, None, {}, []
        return obj

    def __init__(self, *args, **kwargs):
        pass  # arguments were recorded by __new__

    def __setstate__(self, state):
        self.state = state

    def __setitem__(self, key, value):
        self.items[key] = value

    def append(self, value):
        self.elements.append(value)

    def extend(self, values):
        self.elements.extend(values)

    def __repr__(self) -> str:
        return f"<placeholder for {self.qualname}>"


_PLACEHOLDERS: dict[str, type[Placeholder]] = {}


def _placeholder(module: str, name: str) -> type[Placeholder]:
    qualname = f"{module}.{name}"
    if qualname not in _PLACEHOLDERS:
        _PLACEHOLDERS[qualname] = type(f"Placeholder[{qualname}]", (Placeholder,), {"qualname": qualname})
    return _PLACEHOLDERS[qualname]


class Unpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose global lookups never import or call anything outside the
    allowlist (see the module docstring)."""

    def find_class(self, module: str, name: str):
        # Python 2 names, as protocol <= 2 pickles spell them (e.g. __builtin__.set)
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        else:
            module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and isinstance(
            getattr(torch, name, None), (torch.dtype, torch.layout, torch.memory_format)
        ):
            return getattr(torch, name)  # a dtype/layout constant, looked up on the imported torch
        if module.split(".")[0] in _REFUSED_MODULES:
            raise UnsafeCheckpointError(
                f"refusing to load: the pickle references {module}.{name}, which could run code "
                "(a checkpoint only needs tensors and plain data); nothing from the file was executed"
            )
        return _placeholder(module, name)


def load(file, **kwargs):
    """``pickle.load`` with the restricted unpickler (``torch.load`` uses it for headers)."""
    return Unpickler(file, **kwargs).load()


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(n == "constants.pkl" or n.endswith("/constants.pkl") for n in archive.namelist())


class NotACheckpointError(ValueError):
    """The file is not a ``torch.save`` checkpoint at all (empty, an HTML page, truncated, other bytes)."""


def describe_non_checkpoint(path: str | os.PathLike) -> str | None:
    """What is wrong with a file that cannot be a ``torch.save`` checkpoint, naming it and the
    fix; None if it looks like one (a complete zip archive, or a pickle stream: a protocol-2+
    pickle starts with byte 0x80)."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(512)
    if not head:
        return f"{path} is empty (0 bytes; an interrupted download?): download it again"
    if head.lstrip()[:1] == b"<" or b"<html" in head.lower():
        return (
            f"{path} is an HTML page, not a checkpoint (a download that saved a login, redirect or error "
            "page?): download the file itself"
        )
    if head.startswith(b"PK"):
        return (
            None
            if zipfile.is_zipfile(path)
            else (
                f"{path} is a truncated zip archive (an interrupted download or a full disk?): "
                "download or copy it again"
            )
        )
    if head[:1] == b"\x80":
        return None
    return f"{path} is not a PyTorch checkpoint (it starts with {head[:16]!r}): check the path, or download it again"


def safe_load(path: str | os.PathLike) -> dict:
    """Load a ``torch.save``/Lightning checkpoint on the CPU without executing code from it.

    Returns the unpickled top-level dict: tensors are real ``torch.Tensor``s (memory-mapped
    from the file for the zip format, so unused ones such as optimizer states are never read;
    copy what you keep), containers are real, objects of other classes are
    :class:`Placeholder` instances. Raises
    ``FileNotFoundError``, ``UnsafeCheckpointError`` for a file that references a
    code-running global or is a TorchScript archive, and ``ValueError`` if the top level is
    not a dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    problem = describe_non_checkpoint(path)
    if problem:
        raise NotACheckpointError(problem)
    if _is_torchscript(path):
        raise UnsafeCheckpointError(
            f"{path} is a TorchScript archive (loading it runs its code); expected a torch.save / Lightning checkpoint"
        )
    try:
        obj = torch.load(
            path,
            map_location="cpu",
            weights_only=False,
            pickle_module=sys.modules[__name__],
            mmap=zipfile.is_zipfile(path),
        )
    except UnsafeCheckpointError as err:
        raise UnsafeCheckpointError(
            f"{path}: {err}; the file is refused for safety: use a checkpoint that holds only weights and plain data"
        ) from None
    except (pickle.UnpicklingError, EOFError, RuntimeError) as err:  # a damaged pickle or archive
        raise NotACheckpointError(
            f"{path} is a damaged checkpoint ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else 'ends early'}): download or copy it again"
        ) from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a checkpoint dict at the top level, got {type(obj).__name__}")
    return obj
