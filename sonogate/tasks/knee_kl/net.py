"""The knee KL network: ``RadiographCNN`` trunk -> ordinal head over the 5 KL grades (torch).

``KneeKLNet(head, widths, feature_dim, dropout)``: ``forward(x)`` -> head logits (N, L) (L = 4 for coral / corn,
5 for softmax); ``features(x)`` -> (N, feature_dim). ``KneeKLExport`` wraps it for ONNX: x (N, 1, S, S) ->
(``kl_logits`` (N, 5) log class probabilities, ``features`` (N, feature_dim)); log-probabilities, so whatever the
head kind the runtime's softmax of ``kl_logits`` gives the class probabilities.
"""

from __future__ import annotations

import torch
from torch import nn

from sonogate.models.ordinal import OrdinalHead, probabilities
from sonogate.models.radiograph_cnn import RadiographCNN

NUM_GRADES = 5


class KneeKLNet(nn.Module):
    def __init__(self, head: str = "corn", widths: tuple[int, ...] = (24, 32, 64, 128, 256), feature_dim: int = 256,
                 dropout: float = 0.2) -> None:
        super().__init__()
        self.encoder = RadiographCNN(tuple(widths), feature_dim)
        self.head = OrdinalHead(feature_dim, NUM_GRADES, kind=head, dropout=dropout)
        self.kind = head

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


class KneeKLExport(nn.Module):
    """ONNX wrapper: x -> (kl_logits = log class probabilities (N, 5), features (N, F))."""

    def __init__(self, net: KneeKLNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.net.encoder(image)
        probs = probabilities(self.net.head(feats), self.net.kind)
        return torch.log(probs.clamp_min(1e-7)), feats
