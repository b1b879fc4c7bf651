"""Run code written for the original VideoGPT unchanged: the module name ``videogpt`` (and every
``videogpt.<sub>``) maps to ``videogpt_fast`` (``videogpt_fast.<sub>``).

In code::

    import videogpt_fast.compat
    videogpt_fast.compat.install()
    from videogpt import load_vqvae          # videogpt_fast.load_vqvae

From the shell (``python SCRIPT ARGS`` with the mapping installed first)::

    python -m videogpt_fast.compat scripts/sample_videogpt.py --ckpt bair_gpt --n 8

:func:`install` maps the name in the calling process only. The runner also maps it in the script's
child processes (``multiprocessing``/``torch.multiprocessing.spawn`` workers, ``subprocess`` Python
runs): for the script's lifetime it puts a generated ``videogpt`` package, whose import becomes
``videogpt_fast``, first on ``PYTHONPATH`` and last on ``sys.path``.

The mapping is refused (:class:`ShadowingError`; exit status 2 from the shell) when a real
``videogpt`` is importable, installed or on ``sys.path`` (for example the original repository's
folder): it never shadows the original. ``videogpt.X`` is the very module object
``videogpt_fast.X``, so ``isinstance`` checks and module state are shared. Installing says so on
the ``videogpt_fast.compat`` logger at WARNING level (printed to stderr when logging is not
configured).
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import logging
import os
import runpy
import shutil
import sys
import tempfile
from typing import List, Optional, Sequence

log = logging.getLogger(__name__)

ALIAS = "videogpt"
TARGET = "videogpt_fast"

__all__ = ["ALIAS", "TARGET", "ShadowingError", "install", "uninstall", "is_installed", "find_original", "main"]


class ShadowingError(ImportError):
    """A real ``videogpt`` package is importable; mapping the name to videogpt_fast would hide it."""


class _AliasLoader(importlib.abc.Loader):
    """Loads ``videogpt.X`` as the already imported (or now imported) module ``videogpt_fast.X``."""

    def __init__(self, target: str):
        self.target = target
        self.target_spec = None

    def create_module(self, spec):
        module = importlib.import_module(self.target)
        self.target_spec = module.__spec__
        return module

    def exec_module(self, module) -> None:
        # The import system stamped the alias spec on the shared module: give it its own spec back so
        # that relative imports, reloads and pickling inside videogpt_fast are unaffected.
        module.__spec__ = self.target_spec


class _AliasFinder(importlib.abc.MetaPathFinder):
    """Meta-path finder mapping ``videogpt`` and ``videogpt.*`` to ``videogpt_fast`` and ``videogpt_fast.*``."""

    def find_spec(self, fullname: str, path=None, target=None):
        if fullname != ALIAS and not fullname.startswith(ALIAS + "."):
            return None
        real = TARGET + fullname[len(ALIAS):]
        real_spec = importlib.util.find_spec(real)
        if real_spec is None:
            return None  # videogpt_fast has no such module: the normal ModuleNotFoundError follows
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader(real),
                                              is_package=real_spec.submodule_search_locations is not None)


_FINDER: Optional[_AliasFinder] = None
_SHIM_DIRS: List[str] = []  # folders of the generated `videogpt` package for child processes (see main)


def is_installed() -> bool:
    """True when ``videogpt`` is currently mapped to videogpt_fast."""
    return _FINDER is not None and _FINDER in sys.meta_path


def find_original() -> Optional[str]:
    """Where a real (non-aliased) ``videogpt`` package would be imported from, or None.

    Looks at ``sys.modules`` and then ``sys.path`` (an installed distribution, an editable install,
    or a ``videogpt/`` folder in the current directory or the script's folder) without importing it.
    """
    loaded = sys.modules.get(ALIAS)
    if loaded is not None and not is_installed():
        return getattr(loaded, "__file__", None) or repr(loaded)
    spec = None
    for finder in sys.meta_path:  # importlib.util.find_spec without sys.modules and without our finder
        find = getattr(finder, "find_spec", None)
        if finder is not _FINDER and find is not None:
            spec = find(ALIAS, None)
            if spec is not None:
                break
    if spec is None or any(str(spec.origin).startswith(d + os.sep) for d in _SHIM_DIRS):
        return None
    return spec.origin or ", ".join(spec.submodule_search_locations or []) or ALIAS


def install() -> None:
    """Map the module name ``videogpt`` (and its submodules) to ``videogpt_fast`` for this process.

    Idempotent. Raises :class:`ShadowingError` naming the real package's location when the original
    ``videogpt`` is installed, importable from ``sys.path`` or already imported. Logs a WARNING
    saying the mapping is active (stderr when logging is not configured).
    """
    global _FINDER
    if is_installed():
        return
    original = find_original()
    if original is not None:
        raise ShadowingError(
            f"the original VideoGPT package is importable as {ALIAS!r} ({original}); videogpt_fast will not "
            f"shadow it. Uninstall it (pip uninstall videogpt) or run outside its folder to use the mapping, "
            f"or write `import {TARGET} as {ALIAS}` in your own code.")
    _FINDER = _AliasFinder()
    sys.meta_path.insert(0, _FINDER)
    import videogpt_fast
    log.warning("module %r is mapped to %s %s (%s): the original VideoGPT is not installed",
                ALIAS, TARGET, videogpt_fast.__version__, os.path.dirname(videogpt_fast.__file__))


def _adopt() -> None:
    """Called by the ``videogpt`` package the runner generates for its child processes (the parent
    already checked that no real ``videogpt`` exists): map the name and become ``videogpt_fast``."""
    global _FINDER
    if not is_installed():
        _FINDER = _AliasFinder()
        sys.meta_path.insert(0, _FINDER)
    import videogpt_fast
    sys.modules[ALIAS] = videogpt_fast  # the import system returns what sys.modules holds after the shim ran
    log.info("module %r is mapped to %s in this child process", ALIAS, TARGET)


_SHIM = ('"""Generated by videogpt_fast.compat for the child processes of a script it runs: importing '
         '`videogpt` gives videogpt_fast."""\nfrom videogpt_fast.compat import _adopt\n\n_adopt()\n')


def uninstall() -> None:
    """Undo :func:`install`: remove the mapping and forget the ``videogpt*`` names it created."""
    global _FINDER
    if not is_installed():
        return
    sys.meta_path.remove(_FINDER)
    _FINDER = None
    for name in [n for n in sys.modules if n == ALIAS or n.startswith(ALIAS + ".")]:
        if getattr(sys.modules[name], "__name__", "").startswith(TARGET):
            del sys.modules[name]


_USAGE = "usage: python -m videogpt_fast.compat SCRIPT [ARGS ...]  (runs SCRIPT with `videogpt` mapped to videogpt_fast)"


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m videogpt_fast.compat SCRIPT ARGS``: run SCRIPT as ``python SCRIPT ARGS`` would
    (``sys.argv``, ``sys.path[0]`` = the script's folder, ``__name__ == '__main__'``) with the mapping
    installed. Usage errors and a refused mapping: one line on stderr, exit status 2."""
    argv: List[str] = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_USAGE, file=sys.stderr if not argv else sys.stdout)
        return 2 if not argv else 0
    script = argv[0]
    if not os.path.isfile(script):
        print(f"videogpt_fast.compat: error: script {script!r} does not exist", file=sys.stderr)
        return 2
    sys.argv = [script] + argv[1:]
    script_dir = os.path.dirname(os.path.abspath(script))
    if sys.path and sys.path[0] in ("", os.getcwd()):
        sys.path[0] = script_dir  # what `python SCRIPT` puts first
    else:
        sys.path.insert(0, script_dir)
    try:
        install()
    except ShadowingError as e:
        print(f"videogpt_fast.compat: error: {e}", file=sys.stderr)
        return 2
    import videogpt_fast
    shim = tempfile.mkdtemp(prefix="videogpt_fast_compat_")
    os.mkdir(os.path.join(shim, ALIAS))
    with open(os.path.join(shim, ALIAS, "__init__.py"), "w") as f:
        f.write(_SHIM)
    old = os.environ.get("PYTHONPATH")
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(videogpt_fast.__file__)))
    os.environ["PYTHONPATH"] = os.pathsep.join([shim, package_parent] + ([old] if old else []))
    sys.path.append(shim)  # multiprocessing's spawn children take the parent's sys.path
    _SHIM_DIRS.append(shim)
    try:
        runpy.run_path(script, run_name="__main__")
    finally:
        sys.path.remove(shim)
        _SHIM_DIRS.remove(shim)
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old
        shutil.rmtree(shim, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
