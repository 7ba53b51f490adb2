"""The torchvision model zoo the core claims, with the smallest input each model accepts."""
from __future__ import annotations

CNNS = (
    ["alexnet"]
    + [f"vgg{d}{bn}" for d in (11, 13, 16, 19) for bn in ("", "_bn")]
    + ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]
    + ["resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2"]
    + ["densenet121", "densenet161", "densenet169", "densenet201"]
    + ["squeezenet1_0", "squeezenet1_1", "inception_v3", "googlenet"]
    + ["mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small"]
    + ["mnasnet0_5", "mnasnet0_75", "mnasnet1_0", "mnasnet1_3"]
    + ["shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "shufflenet_v2_x1_5", "shufflenet_v2_x2_0"]
    + [f"efficientnet_b{i}" for i in range(8)] + ["efficientnet_v2_s", "efficientnet_v2_m", "efficientnet_v2_l"]
    + [f"regnet_y_{s}" for s in ("400mf", "800mf", "1_6gf", "3_2gf", "8gf", "16gf", "32gf", "128gf")]
    + [f"regnet_x_{s}" for s in ("400mf", "800mf", "1_6gf", "3_2gf", "8gf", "16gf", "32gf")]
    + ["convnext_tiny", "convnext_small", "convnext_base", "convnext_large"]
)

SEGMENTATION = ["fcn_resnet50", "fcn_resnet101", "deeplabv3_resnet50", "deeplabv3_resnet101",
                "deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large"]

# Models too large or slow for the default run (645 M parameters: build + three copies on 2 cores;
# EfficientNet-B7: two minutes, most in the float64 re-check of its squeeze-excitation units).
SLOW = {"regnet_y_128gf", "efficientnet_b7"}


def input_size(name: str) -> int:
    """Smallest convenient square input: Inception's auxiliary head needs 299."""
    return 299 if name == "inception_v3" else 64
