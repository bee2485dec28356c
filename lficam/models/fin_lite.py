"""A light Feature Importance Network: this project's variant of LFI-CAM's FIN (``attention.options.fin=lite``)."""

from __future__ import annotations

from torch import Tensor, nn

from lficam.models.init import he_init


def lite_fin_width(channels: int, *, reduction: int = 8, min_width: int = 16) -> int:
    """Bottleneck width m = min(C, max(min_width, C // reduction)): 16, 32, 64, 256 for C = 64, 256, 512, 2048."""
    return min(channels, max(min_width, channels // reduction))


def lite_fin_parameters(channels: int, *, reduction: int = 8, min_width: int = 16) -> int:
    """Parameter count of :class:`LiteFeatureImportanceNetwork`: 2·C·m + 2·m² + 24·m + 2·C (see its docstring)."""
    m = lite_fin_width(channels, reduction=reduction, min_width=min_width)
    return 2 * channels * m + 2 * m * m + 24 * m + 2 * channels


class LiteFeatureImportanceNetwork(nn.Module):
    """The FIN's job (C masked grey images → one importance per channel) at about 1/128 of its weights.

    The paper's FIN is four dense 3×3 convolutions C→C, 36·C² weights: 151 M at C = 2048, six times a
    ResNet-50. Here the channels are squeezed to a bottleneck of width m and only depthwise-separable
    convolutions see space, as in MobileNet (Howard et al. 2017):
      1×1 conv C→m, BN, ReLU                                    (squeeze)
      2 × [depthwise 3×3 conv on m channels, 1×1 conv m→m, BN, ReLU]   (5×5 receptive field)
      1×1 conv m→C, BN, ReLU                                    (one score per input channel)
      w = softmax_C(GAP(·))                                     as the paper's FIN
    The last ReLU before the softmax is kept from the paper's FIN, so the two variants differ only in
    the layers. Convolutions are bias-free (BN follows each), He-normal (fan_out); BN weight 1, bias 0.

    With m = :func:`lite_fin_width` (C // 8, at least 16, at most C) the parameter count is
      2·C·m (squeeze + expand) + 2·(9·m + m²) (separable blocks) + 2·(m + 2·m + C) (BN weights and biases)
      = 2·C·m + 2·m² + 24·m + 2·C,
    about (9/32)·C² + 5·C for C ≥ 128: 3 072 for C = 64, 19 712 for C = 256, 76 288 for C = 512 and
    1 189 888 for C = 2048 (paper: 36·C² + 8·C = 0.15 M, 2.4 M, 9.4 M, 151 M).
    The paper's ``relu_every_layer`` switch does not apply: every BN here is followed by a ReLU.
    """

    def __init__(self, channels: int, *, reduction: int = 8, min_width: int = 16) -> None:
        super().__init__()
        m = lite_fin_width(channels, reduction=reduction, min_width=min_width)
        layers: list[nn.Module] = [
            nn.Conv2d(channels, m, 1, bias=False),
            nn.BatchNorm2d(m),
            nn.ReLU(inplace=True),
        ]
        for _ in range(2):
            layers += [
                nn.Conv2d(m, m, 3, padding=1, groups=m, bias=False),
                nn.Conv2d(m, m, 1, bias=False),
                nn.BatchNorm2d(m),
                nn.ReLU(inplace=True),
            ]
        layers += [nn.Conv2d(m, channels, 1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]
        self.body = nn.Sequential(*layers)
        self.width = m
        he_init(self)

    def forward(self, masked: Tensor) -> Tensor:
        """masked: B×C×h×w → importance weights B×C (each row sums to 1)."""
        scores = self.body(masked).mean(dim=(2, 3))
        return scores.float().softmax(dim=1).to(scores.dtype)
