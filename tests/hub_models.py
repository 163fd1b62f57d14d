"""Models users bring from Hugging Face and Ultralytics, built from configs with random weights (no downloads).

Small widths and depths keep ``make test`` fast; every model is what ``from_config``
(or Ultralytics' ``DetectionModel(yaml)``) returns, passed to falf_fx as it is.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

# (builder, example input) per architecture: CNNs, hybrids, vision transformers, segmentation, depth and text.


def _image() -> torch.Tensor:
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def _tokens() -> torch.Tensor:
    return torch.randint(0, 100, (2, 16), generator=torch.Generator().manual_seed(0))


def _classifier(config) -> nn.Module:
    from transformers import AutoModelForImageClassification
    return AutoModelForImageClassification.from_config(config)


def hugging_face() -> dict[str, tuple[Callable[[], nn.Module], Callable[[], torch.Tensor]]]:
    import transformers as T
    stages = dict(hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1], num_labels=10)
    vit = dict(image_size=64, patch_size=16, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
               intermediate_size=128)
    return {
        "resnet": (lambda: _classifier(T.ResNetConfig(embedding_size=16, **stages)), _image),
        "convnext": (lambda: _classifier(T.ConvNextConfig(**stages)), _image),
        # global response normalisation divides by the mean over channels: the slim mean counts the removed ones
        "convnextv2": (lambda: _classifier(T.ConvNextV2Config(**stages)), _image),
        "regnet": (lambda: _classifier(T.RegNetConfig(embedding_size=16, groups_width=8, **stages)), _image),
        "mobilenet_v2": (lambda: _classifier(T.MobileNetV2Config(depth_multiplier=0.35, image_size=64,
                                                                 num_labels=10)), _image),
        "efficientnet": (lambda: _classifier(T.EfficientNetConfig(width_coefficient=0.25, depth_coefficient=0.25,
                                                                  hidden_dim=320, image_size=64, num_labels=10)),
                         _image),
        "vit": (lambda: _classifier(T.ViTConfig(num_labels=10, **vit)), _image),
        "swin": (lambda: _classifier(T.SwinConfig(image_size=64, patch_size=4, embed_dim=16, depths=[1, 1],
                                                  num_heads=[2, 4], window_size=4, num_labels=10)), _image),
        "mobilevit": (lambda: _classifier(T.MobileViTConfig(image_size=64, hidden_sizes=[32, 48, 64],
                                                            neck_hidden_sizes=[8, 16, 24, 24, 32, 40, 80],
                                                            num_labels=10)), _image),
        "segformer": (lambda: T.AutoModelForSemanticSegmentation.from_config(T.SegformerConfig(
            hidden_sizes=[16, 32, 40, 64], depths=[1, 1, 1, 1], decoder_hidden_size=32, num_labels=5)), _image),
        "dpt": (lambda: T.AutoModelForDepthEstimation.from_config(T.DPTConfig(
            backbone_out_indices=[0, 1, 2, 3], neck_hidden_sizes=[16, 32, 64, 64], fusion_hidden_size=32,
            **{**vit, "num_hidden_layers": 4})), _image),
        "bert": (lambda: T.AutoModelForSequenceClassification.from_config(T.BertConfig(
            vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
            num_labels=3)), _tokens),
        "bert_encoder": (lambda: T.AutoModel.from_config(T.BertConfig(
            vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)),
            _tokens),
    }


def ultralytics(cfg: str, nc: int = 80) -> nn.Module:
    from ultralytics.nn.tasks import DetectionModel
    return DetectionModel(cfg, nc=nc, verbose=False)
