"""Registry of PETuning methods, one file each."""

from fedpet.methods.adapter import Adapter
from fedpet.methods.base import Method, MethodBase
from fedpet.methods.bitfit import BitFit
from fedpet.methods.full import Full
from fedpet.methods.ia3 import IA3
from fedpet.methods.lora import Lora
from fedpet.methods.lora_sb import LoraSb
from fedpet.methods.prefix import Prefix
from fedpet.methods.prompt import Prompt
from fedpet.registry import Registry


def _instance(found: object) -> Method:
    """What an entry point names: a method, or a method class to instantiate."""
    method = found() if isinstance(found, type) else found
    return method  # type: ignore[return-value]


METHODS: Registry[Method] = Registry(
    "method",
    "fedpet.methods",
    {m.name: m for m in (Full(), Lora(), LoraSb(), Adapter(), Prefix(), BitFit(), Prompt(), IA3())},
    adapt=_instance,
)


def register_method(method: Method) -> None:
    """Make ``method`` available as ``--method <method.name>``."""
    METHODS.register(method.name, method)


__all__ = ["METHODS", "Method", "MethodBase", "register_method"]
