"""A causal language model for fedpet: a decoder (with the method attached) and its LM head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

IGNORE = -100
"""The target of a token that is not scored (prompt and padding), as in transformers."""


class CausalLM(nn.Module):
    """A decoder with the PETuning method attached, and the pretrained output layer.

    Parameters
    ----------
    decoder
        The decoder (the base model, with the method attached); returns ``last_hidden_state``.
    lm_head
        The output layer (vocabulary logits). It is frozen unless the method trains it (full
        fine-tuning), and shared with the input embeddings where the model ties them.
    """

    def __init__(self, decoder: nn.Module, lm_head: nn.Module) -> None:
        super().__init__()
        self.decoder = decoder
        self.lm_head = lm_head

    def hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Last hidden states of shape (batch, tokens, hidden), one per input position."""
        out = self.decoder(input_ids=input_ids, attention_mask=attention_mask)
        hidden: torch.Tensor = out.last_hidden_state[:, -input_ids.shape[1] :]  # soft prompts
        return hidden

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Next-token logits of shape (batch, tokens, vocabulary)."""
        logits: torch.Tensor = self.lm_head(self.hidden(input_ids, attention_mask))
        return logits

    def token_losses(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token losses and argmax hits of the scored targets, as flat vectors.

        ``targets`` holds the id each position should produce (``IGNORE`` where it is not
        scored): position ``t`` is predicted from the tokens before it. The vocabulary
        logits are computed only at the scored positions.
        """
        hidden = self.hidden(input_ids, attention_mask)[:, :-1]
        wanted = targets[:, 1:]
        scored = wanted != IGNORE
        logits = self.lm_head(hidden[scored]).float()
        truth = wanted[scored]
        losses = F.cross_entropy(logits, truth, reduction="none")
        return losses, logits.argmax(-1) == truth

    def response_loss(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, targets: torch.Tensor
    ) -> torch.Tensor:
        """Mean cross-entropy over the scored (response) tokens of the batch."""
        losses, _ = self.token_losses(input_ids, attention_mask, targets)
        return losses.mean()
