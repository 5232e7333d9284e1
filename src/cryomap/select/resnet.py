"""ResNet-152 as a feature extractor, in plain torch, loading torchvision-format state dicts.

torchvision is not installed in this project (its builds break ``import lightning``), and nothing
is downloaded at run time, so the architecture is written here: torchvision's ``resnet152``
(He et al. 2016, "v1.5": the stride of a down-sampling bottleneck sits on its 3×3 convolution),
with the *same* module names, so that the ``state_dict`` of a torchvision ``resnet152`` —
``conv1``, ``bn1``, ``layer1.0.conv1`` … ``layer4.2.bn3``, ``layerN.0.downsample.0/.1``, ``fc`` —
loads with ``strict=True``. The user supplies the weights file (``--weights``: a ``.pth``/``.pt``
read with ``torch.load(weights_only=True)`` or a ``.safetensors`` file).

Features are the 2048-d output of the global average pool, before ``fc`` (``fc`` is kept so the
state dict loads strictly; it is never applied).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from cryomap.errors import BadInputError

#: Bottleneck blocks per stage of ResNet-152.
LAYERS = (3, 8, 36, 3)
#: Width (planes) of each stage; a bottleneck outputs ``4 × planes`` channels.
PLANES = (64, 128, 256, 512)
EXPANSION = 4
#: Length of the feature vector (``4 × 512``).
FEATURE_DIM = 2048


class Bottleneck(nn.Module):
    """1×1 → 3×3 (stride here) → 1×1 convolutions with batch norm, plus the identity or a projection."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out = planes * EXPANSION
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Sequential | None = None
        if stride != 1 or inplanes != out:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + identity)


class ResNet152(nn.Module):
    """torchvision's ``resnet152`` layout; :meth:`features` gives the pooled 2048-d vector.

    Input (B, 3, H, W) ImageNet-normalised images, H, W ≥ 32 px (the network down-samples 32×).
    """

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        inplanes = 64
        for i, (blocks, planes) in enumerate(zip(LAYERS, PLANES)):
            stride = 1 if i == 0 else 2
            layer = [Bottleneck(inplanes, planes, stride)]
            inplanes = planes * EXPANSION
            layer += [Bottleneck(inplanes, planes) for _ in range(blocks - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*layer))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(FEATURE_DIM, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) → (B, 2048): the global-average-pooled output of ``layer4`` (before ``fc``)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (B, num_classes), as torchvision's model; cryomap uses :meth:`features`."""
        return self.fc(self.features(x))


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a weights file: ``.safetensors``, or a ``.pth``/``.pt`` via ``torch.load(weights_only=True)``.

    A checkpoint that wraps the weights as ``{"state_dict": {...}}`` or ``{"model": {...}}`` is
    unwrapped, and a ``module.`` prefix (from DataParallel/DDP) is stripped.
    """
    path = Path(path)
    if not path.is_file():
        raise BadInputError("weights file not found", path)
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's input problem
        raise BadInputError(f"cannot read weights ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})",
                            path) from exc
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BadInputError("is not a state dict (a mapping of parameter names to tensors)", path)
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load_resnet152(path: str | Path) -> ResNet152:
    """A :class:`ResNet152` in eval mode with the weights of ``path`` loaded strictly (torchvision names)."""
    state = read_state_dict(path)
    model = ResNet152(num_classes=int(state["fc.weight"].shape[0]) if "fc.weight" in state else 1000)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        expected = model.state_dict()
        missing = [k for k in expected if k not in state]
        unexpected = [k for k in state if k not in expected]
        shapes = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if shapes:
            k = shapes[0]
            parts.append(f"{len(shapes)} of the wrong shape (e.g. {k}: {tuple(state[k].shape)}, "
                         f"expected {tuple(expected[k].shape)})")
        raise BadInputError("is not a torchvision resnet152 state dict: keys "
                            + "; ".join(parts or [str(exc).splitlines()[0]]), path) from exc
    return model.eval()
