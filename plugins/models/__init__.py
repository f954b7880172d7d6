"""Built-in models."""

from flcore_plugins.models.variants import VARIANTS

from flcore import hookimpl

_MODULE = "flcore_plugins.models"


@hookimpl
def register_models(register):
    register("mlp", f"{_MODULE}.small:MLP", "Multi-layer perceptron on flattened inputs.")
    register("lenet5", f"{_MODULE}.small:LeNet5", "LeNet-5 (LeCun et al. 1998) at native 28x28/32x32 size, about 60k parameters.")
    register("cnn", f"{_MODULE}.small:CNN", "Two conv layers and two dense layers (McMahan et al. 2017's CNN).")
    register("logistic", f"{_MODULE}.small:Logistic", "Multinomial logistic regression (the FedProx Synthetic model).")
    for name, (builder, family) in VARIANTS.items():
        register(name, f"{_MODULE}.zoo:{name}", f"torchvision {builder} ({family} family); scratch, finetune or feature_extract.")
