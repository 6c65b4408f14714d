"""Registry of PETuning methods, one file each."""

from fedpet.methods.adapter import Adapter
from fedpet.methods.base import Method
from fedpet.methods.bitfit import BitFit
from fedpet.methods.full import Full
from fedpet.methods.ia3 import IA3
from fedpet.methods.lora import Lora
from fedpet.methods.prefix import Prefix
from fedpet.methods.prompt import Prompt

METHODS: dict[str, Method] = {
    m.name: m for m in (Full(), Lora(), Adapter(), Prefix(), BitFit(), Prompt(), IA3())
}

__all__ = ["METHODS", "Method"]
