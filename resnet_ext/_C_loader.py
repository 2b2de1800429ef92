"""Imports the compiled extension and refuses one that does not belong here: built against another torch (a
mismatched torch either fails to load the library or, worse, loads it with a different ABI), or -- when it is
borrowed from another `resnet_ext` directory on sys.path -- built from other sources than this checkout's csrc/.

`source_build_id` is also what setup.py bakes into the binary (it loads this file under the name
`resnet_ext_build_id_only`, which skips the import below)."""
import glob
import hashlib
import importlib.machinery
import importlib.util
import mmap
import os
import sys

_MARKER = b"RESNET_EXT_BUILD_ID="


def source_build_id(root):
    """A hash of every file under `root`/csrc (relative path and contents), or None if there is no csrc/ there."""
    csrc = os.path.join(root, "csrc")
    if not os.path.isdir(csrc):
        return None
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(csrc):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__pycache__")
        for name in sorted(filenames):
            if name.startswith(".") or name.endswith((".pyc", ".swp", "~")):
                continue
            path = os.path.join(dirpath, name)
            h.update(os.path.relpath(path, csrc).replace(os.sep, "/").encode() + b"\0")
            with open(path, "rb") as f:
                h.update(f.read())
            h.update(b"\0")
    return h.hexdigest()[:16]


def extension_build_id(path):
    """The build id a compiled _C carries (read from the file, without loading it), or None."""
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            at = m.find(_MARKER)
            if at < 0:
                return None
            end = m.find(b";", at, at + 200)
            return m[at + len(_MARKER):end].decode("ascii", "replace") if end > 0 else None
    except (OSError, ValueError):
        return None


def find_other_build(here, search_path, expected_id):
    """The first `resnet_ext/_C.*` on `search_path` outside `here` whose build id is `expected_id` (any, when
    expected_id is None: no sources to compare with), and the stale ones passed over as (path, build id)."""
    stale = []
    for entry in search_path:
        pkg = os.path.join(entry or ".", "resnet_ext")
        if os.path.abspath(pkg) == os.path.abspath(here):
            continue
        for path in sorted(glob.glob(os.path.join(pkg, "_C.*.so")) + glob.glob(os.path.join(pkg, "_C.*.pyd"))):
            built = extension_build_id(path)
            if expected_id is None or built == expected_id:
                return path, stale
            stale.append((path, built))
    return None, stale


def _load(path):
    loader = importlib.machinery.ExtensionFileLoader("resnet_ext._C", path)
    spec = importlib.util.spec_from_file_location("resnet_ext._C", path, loader=loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    sys.modules["resnet_ext._C"] = module
    return module


if __name__ != "resnet_ext_build_id_only":
    import torch

    _REBUILD = ("rebuild resnet_ext against the installed torch: "
                "`pip install --no-build-isolation --force-reinstall --no-deps .` from the resnet_ext source tree")
    _here = os.path.dirname(os.path.abspath(__file__))
    try:
        from . import _C  # noqa: F401  (registers the resnet_ext:: ops with the dispatcher)
    except ImportError as e:
        if glob.glob(os.path.join(_here, "_C.*")):  # undefined symbols when torch changed underneath
            raise ImportError(f"resnet_ext._C could not be loaded with torch {torch.__version__} ({e}); "
                              f"{_REBUILD}") from e
        # Run from a source checkout after a plain `pip install .`, the checkout's resnet_ext/ (without _C)
        # shadows the installed package: use the extension pip built -- from these same sources.
        _expected = source_build_id(os.path.dirname(_here))
        _path, _stale = find_other_build(_here, sys.path, _expected)
        if _path is None:
            _why = "".join(f"; {p} was built from other sources (build id {b}, these sources: {_expected})"
                           for p, b in _stale)
            raise ImportError(f"resnet_ext._C could not be loaded ({e}){_why}; build it: "
                              f"`pip install --no-build-isolation --no-deps .` or "
                              f"`python setup.py build_ext --inplace`") from e
        _C = _load(_path)

    _built = _C.build_info()["torch_version"]
    if _built != torch.__version__:
        raise ImportError(f"resnet_ext was built against torch {_built} but torch {torch.__version__} is installed; "
                          f"{_REBUILD}")
