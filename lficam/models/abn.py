"""The Attention Branch Network, LFI-CAM's trainable baseline (Fukui et al., CVPR 2019, arXiv 1812.10025)."""

from __future__ import annotations

from torch import Tensor, nn

from lficam.core.errors import UserError
from lficam.models.backbones import Backbone
from lficam.models.heads import Classifier
from lficam.models.init import he_init
from lficam.models.output import ModelOutput, check_images


class ABNClassifier(Classifier):
    """ABN on any :class:`Backbone` (method.md §2): an attention branch makes a map that reweights the features.

    With x the normalised input, L the number of stages and K the number of classes:
      g      = stem + stages[:L−1] (x)                     feature extractor (CIFAR: 16×16 at 32 px;
                                                            torchvision: 14×14 at 224 px)
      a      = ReLU(BN(conv1×1_{C→K}(BN(stage'_L(g)))))    stage'_L: a fresh copy of the last stage, stride 1
      z_att  = GAP(conv1×1_{K→K}(a))                       attention logits (``aux_logits``)
      M      = sigmoid(BN(conv3×3_{K→1}(a)))               attention map in (0, 1), the extractor's resolution
      g'     = (1 + M) · g                                 M broadcast over channels (residual attention)
      z      = FC(GAP(post(stage_L(g'))))                  perception logits (``logits``): the backbone's
                                                            own last stage, so ``target_layer`` stays it
                                                            (post: identity; DenseNet's final BN-ReLU)
    Loss: CE(z, y) + CE(z_att, y) with equal weights (:meth:`Classifier.loss`); accuracy is read on z.
    Nothing is detached: the perception loss also trains the attention branch through M.
    All convolutions of the branch are bias-free (each is followed by BN or GAP) and He-normal (fan_out)
    initialised; BN weight 1, bias 0.
    """

    def __init__(self, backbone: Backbone, num_classes: int) -> None:
        super().__init__()
        if len(backbone.stages) < 2:
            raise UserError(
                f"ABN needs a backbone with at least two stages (it branches before the last one), and "
                f"{backbone.name} is one block: ABN works on ResNet, ResNeXt, SE-ResNet, RegNet, DenseNet, "
                "EfficientNet, MobileNetV3 and the CIFAR families; use attention=lficam or attention=none here."
            )
        self.backbone = backbone
        channels = backbone.out_channels
        self.attention_stage = backbone.last_stage_copy(stride=1)
        self.attention_features = nn.Sequential(
            nn.BatchNorm2d(channels),
            nn.Conv2d(channels, num_classes, 1, bias=False),
            nn.BatchNorm2d(num_classes),
            nn.ReLU(inplace=True),
        )
        self.attention_scores = nn.Conv2d(num_classes, num_classes, 1, bias=False)
        self.attention_map = nn.Sequential(
            nn.Conv2d(num_classes, 1, 3, padding=1, bias=False),
            nn.BatchNorm2d(1),
            nn.Sigmoid(),
        )
        self.fc = nn.Linear(channels, num_classes)
        for module in (self.attention_features, self.attention_scores, self.attention_map):
            he_init(module)

    def attention_branch(self, extracted: Tensor) -> tuple[Tensor, Tensor]:
        """g (B×C'×h×w) → (attention logits B×K, map M B×1×h×w)."""
        branch = self.attention_features(self.attention_stage(extracted))
        logits = self.attention_scores(branch).mean(dim=(2, 3))
        return logits, self.attention_map(branch)

    def forward(self, x: Tensor) -> ModelOutput:
        check_images(x)
        extracted = self.backbone.forward_until(x, len(self.backbone.stages) - 1)
        aux_logits, attention = self.attention_branch(extracted)
        reweighted = (1 + attention.to(extracted.dtype)) * extracted
        features = self.backbone.post(self.backbone.stages[-1](reweighted))
        logits = self.fc(features.mean(dim=(2, 3)))
        return ModelOutput(logits, attention.squeeze(1), aux_logits)
