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
    """ONNX wrapper: x -> (kl_logits = log class probabilities (N, 5), features (N, F)).

    ``flip_average``: the grade probabilities are the normalised geometric mean of the image's and its left-right
    mirror's (a right knee's film reads like a left knee's; chosen on val: accuracy 51.1 -> 53.2 %, MAE 0.597 ->
    0.567, QWK 0.700 -> 0.714 for the shipped trunk). ``features`` are the image's own (the OOD check's)."""

    def __init__(self, net: KneeKLNet, flip_average: bool = False) -> None:
        super().__init__()
        self.net = net
        self.flip_average = flip_average

    def log_probabilities(self, feats: torch.Tensor) -> torch.Tensor:
        return torch.log(probabilities(self.net.head(feats), self.net.kind).clamp_min(1e-7))

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.flip_average:
            feats = self.net.encoder(image)
            return self.log_probabilities(feats), feats
        n = image.shape[0]
        # one trunk pass over the image and its mirror stacked: one copy of the weights in the graph
        both = self.net.encoder(torch.cat([image, torch.flip(image, dims=(3,))], dim=0))
        log_probs = self.log_probabilities(both)
        return torch.log_softmax((log_probs[:n] + log_probs[n:]) / 2, dim=1), both[:n]
