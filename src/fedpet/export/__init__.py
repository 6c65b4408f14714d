"""Taking a trained model away: library-format exports, and loading a run or an export back.

:func:`export_run` writes a run's global state in its library's own format (a peft adapter,
an adapters-library adapter, or a transformers model), with the head, the tokenizer, the
label names and a model card; :func:`open_model` loads either a run directory or such an
export into a :class:`~fedpet.model.TextClassifier` for prediction and evaluation.
"""

from fedpet.export.loading import Loaded, open_model
from fedpet.export.write import export_run

__all__ = ["Loaded", "export_run", "open_model"]
