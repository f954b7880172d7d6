"""Built-in datasets."""

from flcore import hookimpl

_MODULE = "flcore_plugins.datasets"


@hookimpl
def register_datasets(register):
    register("digits", f"{_MODULE}.digits:Digits",
             "scikit-learn's 1,797 handwritten digits (8x8, 10 classes); embedded, no download.")
    register("mnist", f"{_MODULE}.vision:MNIST", "MNIST handwritten digits, 28x28 (torchvision files).")
    register("fashion_mnist", f"{_MODULE}.vision:FashionMNIST", "Fashion-MNIST clothing images, 28x28 (torchvision files).")
    register("emnist", f"{_MODULE}.vision:EMNIST",
             "EMNIST, any of byclass, bymerge, balanced, digits, letters, mnist; 28x28 (torchvision files).")
    register("cifar10", f"{_MODULE}.vision:CIFAR10", "CIFAR-10 colour images, 32x32, 10 classes (torchvision files).")
    register("cifar100", f"{_MODULE}.vision:CIFAR100", "CIFAR-100 colour images, 32x32, 100 classes (torchvision files).")
    register("synthetic", f"{_MODULE}.synthetic:Synthetic",
             "Synthetic(alpha, beta) of the FedProx paper, generated per user; embedded, no download.")
