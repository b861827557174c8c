"""transformers' own model code, for the architectures ``modules`` does not cover and for the ONNX export."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from shared.backbones.base import LAST_HIDDEN_STATE
from shared.backbones.torch.modules import per_utterance


class HiddenStateReadout(torch.nn.Module):
    """A (truncated) Hugging Face encoder returning the chosen hidden state directly.

    ``forward(input_values [B, S] float, attention_mask [B, S] int64 or None)`` returns ``[B, T, H]``: the
    hidden state ``layers`` names, or the mean of several. Used as is by the torch backend and exported
    as the whole ONNX graph, so both backends compute the same thing.
    """

    def __init__(self, model: torch.nn.Module, layers: Sequence[int]) -> None:
        super().__init__()
        self.model = model
        self.layers = tuple(layers)
        self.needs_hidden_states = any(idx != LAST_HIDDEN_STATE for idx in self.layers)

    def forward(self, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        out = self.model(
            input_values, attention_mask=attention_mask, output_hidden_states=self.needs_hidden_states
        )
        states = [
            out.last_hidden_state if idx == LAST_HIDDEN_STATE else out.hidden_states[idx]
            for idx in self.layers
        ]
        return states[0] if len(states) == 1 else torch.stack(states).mean(dim=0)


class PerUtteranceFeatureEncoder(torch.nn.Module):
    """Runs transformers' convolutional feature encoder one utterance of the batch at a time
    (``modules.per_utterance``, as the project's own ``FeatureEncoder`` does)."""

    def __init__(self, encoder: torch.nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_values: torch.Tensor) -> torch.Tensor:
        return per_utterance(self.encoder, input_values)
