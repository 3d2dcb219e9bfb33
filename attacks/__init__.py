"""Byzantine attacks for fedsim: update forgers, data poisoners, and probes (unlearning,
cloning). Pure tensor math. Every module is imported so ``@register`` runs for each attack."""

import importlib
import pkgutil

from attacks.base import AttackContext, DataPoisoner, UpdateForger
from attacks.registry import REGISTRY, available, build, register

for _m in pkgutil.iter_modules(__path__):
    if _m.name not in {"base", "registry", "probes"} and not _m.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["AttackContext", "DataPoisoner", "UpdateForger", "REGISTRY", "available", "build", "register"]
