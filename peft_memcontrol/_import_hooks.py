"""Run a function once a module has been imported, whoever imports it (a post-import hook).

``import peft_memcontrol`` promises that PEFT knows our methods, yet must not import PEFT (and with it torch) itself:
``memcontrol search --help`` would then take seconds. So the package registers its methods once PEFT is imported (by
the user, by diffusers, by our own modules), or at once if it already is.

"Once" means after the outermost import under way when PEFT's import ends: diffusers imports PEFT halfway through
its own modules, and registering our methods imports diffusers modules (``diffusers.loaders.peft``) that are not
finished at that moment.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from importlib.abc import Loader, MetaPathFinder
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Any


def call_after_import(module_name: str, callback: Callable[[], None]) -> None:
    """Call ``callback`` once ``module_name`` has been imported: now if it is in ``sys.modules``, else when the
    outermost module import under way when ``module_name``'s ends (inside that import statement: an exception of
    ``callback`` fails it). Only the first import of ``module_name`` after this call runs ``callback``."""
    if module_name in sys.modules:
        callback()
    else:
        sys.meta_path.insert(0, _AfterImportFinder(module_name, callback))


class _AfterImportFinder(MetaPathFinder):
    """Until ``callback`` has run, finds every module with the other finders and wraps the loader of its spec in
    `_CountingLoader`, which counts the module imports under way and tells when ``module_name`` has been executed.

    It stays in ``sys.meta_path`` until then: ``importlib.util.find_spec`` (which libraries call to ask whether a
    package is installed) also asks the finders, without importing anything.
    """

    def __init__(self, module_name: str, callback: Callable[[], None]) -> None:
        self.module_name = module_name
        self.callback = callback
        self.imports_under_way = 0
        self.module_imported = False

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _CountingLoader(spec.loader, self)
                return spec
        return None

    def import_ended(self, module_name: str) -> None:
        """Called by `_CountingLoader` after a module's execution, successful or not."""
        self.imports_under_way -= 1
        self.module_imported = self.module_imported or (module_name == self.module_name and module_name in sys.modules)
        if self.module_imported and self.imports_under_way == 0 and self in sys.meta_path:
            sys.meta_path.remove(self)
            self.callback()


class _CountingLoader(Loader):
    """Executes a module with the loader it was found with, and tells the finder when the execution begins and ends;
    every other loader method (``get_code``, which ``python -m`` calls, ``is_package``, ...) is the found loader's."""

    def __init__(self, loader: Loader, finder: _AfterImportFinder) -> None:
        self.loader = loader
        self.finder = finder

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        # The module sees the loader it was found with (importlib.resources and pkgutil ask it for files).
        module.__loader__ = module.__spec__.loader = self.loader
        self.finder.imports_under_way += 1
        try:
            self.loader.exec_module(module)
        finally:
            self.finder.import_ended(module.__name__)
