"""The torchvision variants of the model zoo, kept free of heavy imports so registration stays cheap."""

# family -> (head path, first-conv path); a path is attribute names and indices
FAMILIES: dict[str, tuple[str, str]] = {
    "alexnet": ("classifier.6", "features.0"),
    "densenet": ("classifier", "features.conv0"),
    "mobilenet_v2": ("classifier.1", "features.0.0"),
    "mobilenet_v3": ("classifier.3", "features.0.0"),
    "resnet": ("fc", "conv1"),
    "shufflenet": ("fc", "conv1.0"),
    "squeezenet": ("classifier.1", "features.0"),
    "vgg": ("classifier.6", "features.0"),
}

#: registered name -> (torchvision builder, family)
VARIANTS: dict[str, tuple[str, str]] = {
    "alexnet": ("alexnet", "alexnet"),
    **{f"densenet{d}": (f"densenet{d}", "densenet") for d in (121, 161, 169, 201)},
    "mobilenet_v2": ("mobilenet_v2", "mobilenet_v2"),
    "mobilenet_v3_small": ("mobilenet_v3_small", "mobilenet_v3"),
    "mobilenet_v3_large": ("mobilenet_v3_large", "mobilenet_v3"),
    **{f"resnet{d}": (f"resnet{d}", "resnet") for d in (18, 34, 50, 101, 152)},
    "resnext50_32x4d": ("resnext50_32x4d", "resnet"),
    "resnext101_32x8d": ("resnext101_32x8d", "resnet"),
    "wide_resnet50_2": ("wide_resnet50_2", "resnet"),
    "wide_resnet101_2": ("wide_resnet101_2", "resnet"),
    **{f"shufflenet_v2_{w}": (f"shufflenet_v2_{w}", "shufflenet") for w in ("x0_5", "x1_0", "x1_5", "x2_0")},
    "squeezenet1_0": ("squeezenet1_0", "squeezenet"),
    "squeezenet1_1": ("squeezenet1_1", "squeezenet"),
    **{f"vgg{d}{bn}": (f"vgg{d}{bn}", "vgg") for d in (11, 13, 16, 19) for bn in ("", "_bn")},
}
