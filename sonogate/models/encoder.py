"""ResNet-18 trunk for one gray channel (torchvision weights=None: nothing can be downloaded)."""

from __future__ import annotations

import torch
from torch import nn

FEATURE_DIM = 512
LAYER3_CHANNELS = 256


class Encoder(nn.Module):
    """torchvision ResNet-18 with a 1-channel conv1 and no fc.

    ``forward(x)`` -> pooled features (N, 512). ``forward_maps(x)`` -> (layer3 (N, 256, S/16, S/16),
    layer4 (N, 512, S/32, S/32)). Input x: (N, 1, S, S), already normalised.
    """

    def __init__(self) -> None:
        super().__init__()
        from torchvision.models import resnet18

        net = resnet18(weights=None)
        self.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1, self.relu, self.maxpool = net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")

    def stem_to_layer3(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer3(self.layer2(self.layer1(x)))

    def forward_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f3 = self.stem_to_layer3(x)
        return f3, self.layer4(f3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pool(self.layer4(self.stem_to_layer3(x)))


def pool(f4: torch.Tensor) -> torch.Tensor:
    """Global average pool (N, C, h, w) -> (N, C); a mean, which exports as ReduceMean and keeps dynamic N."""
    return f4.mean(dim=(2, 3))
