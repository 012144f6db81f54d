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
    0.567, QWK 0.700 -> 0.714 for the earlier 192 px trunk). ``members``: further trained networks of the same
    input size (an ensemble of independently seeded runs); the normalised geometric mean then runs over every
    network (and mirror). ``features`` are the first network's on the image itself (the OOD check's)."""

    def __init__(self, net: KneeKLNet, flip_average: bool = False, members: tuple[KneeKLNet, ...] = ()) -> None:
        super().__init__()
        self.net = net
        self.flip_average = flip_average
        self.members = nn.ModuleList(members)

    @staticmethod
    def _log_probabilities(net: KneeKLNet, feats: torch.Tensor) -> torch.Tensor:
        return torch.log(probabilities(net.head(feats), net.kind).clamp_min(1e-7))

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.flip_average and len(self.members) == 0:
            feats = self.net.encoder(image)
            return self._log_probabilities(self.net, feats), feats
        n = image.shape[0]
        # one trunk pass per network over the image and its mirror stacked: one copy of each network's weights
        batch = torch.cat([image, torch.flip(image, dims=(3,))], dim=0) if self.flip_average else image
        own = self.net.encoder(batch)
        log_probs = [self._log_probabilities(self.net, own)]
        log_probs += [self._log_probabilities(member, member.encoder(batch)) for member in self.members]
        stacked = torch.cat(log_probs, dim=0)
        views = stacked.shape[0] // n
        return torch.log_softmax(stacked.reshape(views, n, -1).mean(dim=0), dim=1), own[:n]
