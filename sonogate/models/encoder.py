"""ResNet-18 trunk for one gray channel (torchvision weights=None: nothing can be downloaded)."""

from __future__ import annotations

import torch
from torch import nn

FEATURE_DIM = 512
LAYER3_CHANNELS = 256
LAYER2_CHANNELS = 128


class Encoder(nn.Module):
    """torchvision ResNet-18 with a 1-channel conv1 and no fc.

    ``forward(x)`` -> pooled features (N, 512). ``forward_maps(x)`` -> (layer2 (N, 128, S/8, S/8),
    layer3 (N, 256, S/16, S/16), layer4 (N, 512, S/32, S/32)). Input x: (N, 1, S, S), already normalised.
    """

    def __init__(self) -> None:
        super().__init__()
        from torchvision.models import resnet18

        net = resnet18(weights=None)
        self.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1, self.relu, self.maxpool = net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")

    def to_layer2(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer2(self.layer1(self.maxpool(self.relu(self.bn1(self.conv1(x))))))

    def to_layer3(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(layer2, layer3) maps: what a fine-tuned layer4 starts from."""
        f2 = self.to_layer2(x)
        return f2, self.layer3(f2)

    def forward_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        f2, f3 = self.to_layer3(x)
        return f2, f3, self.layer4(f3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pool(self.layer4(self.layer3(self.to_layer2(x))))


def pool(f4: torch.Tensor) -> torch.Tensor:
    """Global average pool (N, C, h, w) -> (N, C); a mean, which exports as ReduceMean and keeps dynamic N."""
    return f4.mean(dim=(2, 3))
