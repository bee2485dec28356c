"""The initialisation every network of the project starts from (He et al. 2015, as the ResNet papers)."""

from __future__ import annotations

from torch import nn


def he_init(module: nn.Module) -> nn.Module:
    """He-normal (fan_out, ReLU gain) for every convolution, weight 1 and bias 0 for every BatchNorm, in place.

    The official LFI-CAM and ABN code initialise their networks this way; BatchNorm running statistics are
    reset too, so a copied layer (ABN's attention branch) starts fresh. Returns the module.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
            m.reset_running_stats()
    return module
