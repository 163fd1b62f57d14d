"""Built-in example networks (the papers' small benchmarks), usable as CLI MODEL specs.

``falf-fx prune falf_fx.models:resnet20 --input-shape 1,3,32,32``
"""
from __future__ import annotations

from torch import nn

from .errors import FalfValueError

__all__ = ["lenet5", "mobilenet_v2_cifar", "resnet20", "resnet56", "resnet_cifar", "vgg11_cifar", "vgg16_cifar"]


def lenet5(num_classes: int = 10, in_channels: int = 1) -> nn.Sequential:
    """LeNet-5 as in the pruning papers (20-50-800-500), for 28x28 inputs."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 20, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(20, 50, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(50 * 4 * 4, 500), nn.ReLU(), nn.Linear(500, num_classes),
    )


class BasicBlock(nn.Module):
    """CIFAR ResNet block; a 1x1 conv + BN shortcut where the shape changes."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNetCifar(nn.Module):
    def __init__(self, depth: int, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise FalfValueError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110, 1202), got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        layers, planes = [], 16
        for stage, width in enumerate((16, 32, 64)):
            blocks = []
            for i in range(n):
                blocks.append(BasicBlock(planes, width, 2 if (stage > 0 and i == 0) else 1))
                planes = width
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.pool(x).flatten(1))


def resnet_cifar(depth: int = 20, num_classes: int = 10, in_channels: int = 3) -> ResNetCifar:
    return ResNetCifar(depth, num_classes, in_channels)


def resnet20(num_classes: int = 10, in_channels: int = 3) -> ResNetCifar:
    return ResNetCifar(20, num_classes, in_channels)


def resnet56(num_classes: int = 10, in_channels: int = 3) -> ResNetCifar:
    return ResNetCifar(56, num_classes, in_channels)


_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
_VGG11 = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


def _vgg(plan: tuple, num_classes: int, in_channels: int, width: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    channels = in_channels
    for item in plan:
        if item == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            out = max(1, int(item * width))
            layers += [nn.Conv2d(channels, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            channels = out
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(channels, num_classes))


def vgg16_cifar(num_classes: int = 10, in_channels: int = 3) -> nn.Sequential:
    """VGG-16 for 32x32 inputs, BN after every conv, one linear classifier (313.7 M MACs)."""
    return _vgg(_VGG16, num_classes, in_channels, 1.0)


def vgg11_cifar(num_classes: int = 10, in_channels: int = 3, width: float = 0.5) -> nn.Sequential:
    """VGG-11 (configuration A) for 32x32 inputs with BN, at ``width`` of its channels (0.5: 38.8 M MACs)."""
    return _vgg(_VGG11, num_classes, in_channels, width)


def mobilenet_v2_cifar(num_classes: int = 10, width: float = 0.5) -> nn.Module:
    """torchvision's MobileNetV2 at ``width``, with a stride-1 stem for 32x32 inputs (CIFAR practice)."""
    from torchvision.models import mobilenet_v2

    model = mobilenet_v2(width_mult=width, num_classes=num_classes)
    model.features[0][0].stride = (1, 1)
    return model
