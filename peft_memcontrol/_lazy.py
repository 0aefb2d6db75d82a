"""Package names that are imported on first use (PEP 562), so that importing the package itself stays cheap."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any


def lazy_exports(
    package: str, names: Sequence[str], submodules: Sequence[str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of a package whose ``names`` are defined in its ``submodules``.

    The first use of any of ``names`` imports every submodule (in the order given) and binds each name in the package,
    so that later uses are plain attribute lookups. A submodule's name itself (``peft_memcontrol.tuners``) imports it.

    Args:
        package: the package's ``__name__``.
        names: the names the package exports (its ``__all__``).
        submodules: the relative names of the submodules that define them (``"tuners"``).

    Raises:
        ImportError: from ``__getattr__``, naming the names that no submodule defines.
    """
    namespace = importlib.import_module(package).__dict__

    def load_names() -> None:
        modules = [importlib.import_module(f"{package}.{submodule}") for submodule in submodules]
        missing = [name for name in names if not any(hasattr(module, name) for module in modules)]
        if missing:
            raise ImportError(f"{package} exports {missing}, which none of its submodules {list(submodules)} defines.")
        for name in names:
            namespace[name] = next(getattr(module, name) for module in modules if hasattr(module, name))

    def __getattr__(name: str) -> Any:
        if name in submodules:
            return importlib.import_module(f"{package}.{name}")
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        load_names()
        return namespace[name]

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(names))

    return __getattr__, __dir__
