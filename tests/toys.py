"""Small models shared by the tests."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


class TinyCNN(nn.Module):
    """conv(3->4)-ReLU-conv(4->6)-ReLU-pool-linear(6->5)-ReLU-linear(5->3), for 8x8 inputs."""

    def __init__(self, in_channels: int = 3, num_classes: int = 3, inplace: bool = False):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 4, 3, padding=1),
            nn.ReLU(inplace=inplace),
            nn.Conv2d(4, 6, 3, padding=1),
            nn.BatchNorm2d(6),
            nn.ReLU(inplace=inplace),
            nn.AdaptiveAvgPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(24, 5), nn.ReLU(), nn.Dropout(0.5), nn.Linear(5, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def tiny_cnn(seed: int = 0, **kwargs: object) -> TinyCNN:
    torch.manual_seed(seed)
    model = TinyCNN(**kwargs)  # type: ignore[arg-type]
    with torch.no_grad():  # non-trivial BatchNorm statistics
        model.features[3].running_mean.uniform_(-0.2, 0.2)
        model.features[3].running_var.uniform_(0.5, 1.5)
    return model.eval()


class HandModel(nn.Module):
    """y = W2 relu(W1 x) with hand-set weights; x has 2 features, 3 hidden units, 2 classes.

    With x = (1, 2): hidden pre-activations (1, 2-1=1... see tests) are easy to compute by hand.
    """

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(2, 3, bias=False)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(3, 2, bias=False)
        with torch.no_grad():
            self.fc1.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, -1.0]]))
            self.fc2.weight.copy_(torch.tensor([[1.0, 2.0, 3.0], [-1.0, 0.5, 0.0]]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class FunctionalCNN(nn.Module):
    """Uses F.relu inside forward: no activation modules to find."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 3, 3, padding=1)
        self.conv2 = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        return self.fc(x.mean(dim=(2, 3)))


def save_centred_vgg(directory: Path, seed: int = 0) -> Path:
    """Save an untrained small VGG-11 target (synthetic data, 4 classes) whose logits are centred
    over training images, so that it predicts every class (without that, its biases alone decide
    the class and swap pairs are rare)."""
    from neuralpath.checkpoint import TargetMeta, save_target
    from neuralpath.data import load_dataset
    from neuralpath.models import build_model

    torch.manual_seed(seed)
    model = build_model("vgg11", num_classes=4, in_channels=3, input_size=32, width=0.125).eval()
    with torch.no_grad():
        logits = model(load_dataset("synthetic", "train", limit=256).images)
        model.classifier[-1].bias -= logits.mean(0)
    meta = TargetMeta(
        arch="vgg11",
        arch_args={"num_classes": 4, "in_channels": 3, "input_size": 32, "width": 0.125},
        data="synthetic",
        input_shape=(3, 32, 32),
        num_classes=4,
        class_names=["circle", "square", "triangle", "cross"],
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
    )
    return save_target(directory, model, meta)
