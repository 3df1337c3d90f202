"""`resnet18`: the ResNet-18 that MedMNIST v2's own experiments train on 28x28 images, in Flax NNX.

Source: MedMNIST/experiments, `MedMNIST2D/models.py` (`ResNet18(in_channels, num_classes)`, "adapted
from kuangliu/pytorch-cifar"), which `MedMNIST2D/train_and_eval_pytorch.py` builds for the 28x28
images (without --resize; with it they use torchvision's ImageNet resnet18 on 224x224 instead):

    stem     Conv2d(C, 64, 3, stride 1, padding 1, bias=False) -> BatchNorm -> relu; no max-pool
    layer1   2 x BasicBlock(64),  stride 1          28x28
    layer2   2 x BasicBlock(128), first stride 2    14x14
    layer3   2 x BasicBlock(256), first stride 2    7x7
    layer4   2 x BasicBlock(512), first stride 2    4x4
    head     AdaptiveAvgPool2d(1) (global average) -> Linear(512, num_classes)
    BasicBlock: conv3x3(stride) -> BN -> relu -> conv3x3 -> BN, plus the shortcut (identity, or
    Conv2d 1x1(stride, bias=False) -> BN where the stride or the width changes), then relu.

Their input is ToTensor then Normalize(mean=.5, std=.5): pixels in [-1, 1], so the module maps the
[0, 1] images it is given (registry contract) by 2x - 1. Their model sets no initializer, so this
one uses PyTorch's defaults, not Keras's: convolutions and the Linear's weight kaiming-uniform with
a = sqrt(5), i.e. U(+-1/sqrt(fan_in)); the Linear's bias U(+-1/sqrt(fan_in)); BatchNorm scale 1,
bias 0, PyTorch momentum 0.1 (Flax's momentum 0.9: the weight of the old average) and epsilon 1e-5.
Two differences remain, both documented choices: (1) for two classes flaxray's head is one logit
with a sigmoid (Linear(512, 1)), theirs two with a softmax; softmax cross-entropy over two logits
equals the sigmoid cross-entropy of their difference, so the model family is the same and the head
has 513 parameters fewer. (2) PyTorch updates the running variance with the unbiased batch variance,
Flax with the biased one (a factor n/(n-1), 1.008 at batch 128). Their training (Adam lr 1e-3,
batch 128, 100 epochs, lr x0.1 at epochs 50 and 75) is the trainer's business, not the model's.

The 3x3 convolutions run in the form `conv.form()` chooses for the backend (`flaxray.models.conv`):
`lax.conv_general_dilated` on GPU and TPU; on CPU the shifted copies of `conv.neighbourhoods`
(strided for the stride-2 convs) and one matmul, since XLA:CPU runs `lax.conv` inside the trainer's
scan and vmap over seeds ~35x slower (jax-ml/jax#12868). The 1x1 shortcuts are a matmul in both.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from flaxray.models.conv import conv3x3

# PyTorch's default for Conv2d and Linear weights: kaiming_uniform_(a=sqrt(5)) has gain sqrt(2 / (1 + 5))
# and bound gain * sqrt(3 / fan_in) = 1 / sqrt(fan_in), which is variance scaling 1/3, fan_in, uniform
# (fan_in = in_channels * kernel height * width, as Flax counts it for an HWIO kernel).
torch_kernel_init = nnx.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


def torch_batch_norm(features: int, rngs: nnx.Rngs, dtype) -> nnx.BatchNorm:
    # PyTorch's BatchNorm2d(momentum=0.1, eps=1e-5); statistics kept in float32 whatever the compute dtype.
    return nnx.BatchNorm(features, momentum=0.9, epsilon=1e-5, dtype=dtype, rngs=rngs)


class Conv(nnx.Module):
    """PyTorch's Conv2d(in, out, size in (1, 3), stride, padding=size // 2, bias=False), NHWC, HWIO kernel."""

    def __init__(self, in_channels: int, out_channels: int, size: int, stride: int, *, rngs: nnx.Rngs):
        self.kernel = nnx.Param(torch_kernel_init(rngs.params(), (size, size, in_channels, out_channels)))
        self.stride = stride

    def __call__(self, x):
        kernel = self.kernel[...].astype(x.dtype)
        if kernel.shape[0] == 1:  # 1x1, no padding: every stride-th pixel
            return x[:, ::self.stride, ::self.stride] @ kernel[0, 0]
        return conv3x3(x, kernel, self.stride)


class BasicBlock(nnx.Module):
    def __init__(self, in_channels: int, channels: int, stride: int, *, rngs: nnx.Rngs, dtype):
        self.conv1 = Conv(in_channels, channels, 3, stride, rngs=rngs)
        self.bn1 = torch_batch_norm(channels, rngs, dtype)
        self.conv2 = Conv(channels, channels, 3, 1, rngs=rngs)
        self.bn2 = torch_batch_norm(channels, rngs, dtype)
        self.projection = stride != 1 or in_channels != channels
        if self.projection:
            self.shortcut_conv = Conv(in_channels, channels, 1, stride, rngs=rngs)
            self.shortcut_bn = torch_batch_norm(channels, rngs, dtype)

    def __call__(self, x, *, train: bool):
        avg = not train
        out = nnx.relu(self.bn1(self.conv1(x), use_running_average=avg))
        out = self.bn2(self.conv2(out), use_running_average=avg)
        shortcut = self.shortcut_bn(self.shortcut_conv(x), use_running_average=avg) if self.projection else x
        return nnx.relu(out + shortcut)


WIDTHS, STRIDES = (64, 128, 256, 512), (1, 2, 2, 2)


class ResNet18(nnx.Module):
    """MedMNIST v2's ResNet-18 for 28x28 inputs (any size works), a registry factory:
    `ResNet18(input_shape, num_outputs, *, rngs, dtype)`, called on [0, 1] images."""

    def __init__(self, input_shape: tuple[int, ...], num_outputs: int, *, rngs: nnx.Rngs, dtype=jnp.float32):
        channels = input_shape[-1]
        self.stem = Conv(channels, 64, 3, 1, rngs=rngs)
        self.stem_bn = torch_batch_norm(64, rngs, dtype)
        blocks, width = [], 64
        for out, stride in zip(WIDTHS, STRIDES):
            blocks += [BasicBlock(width, out, stride, rngs=rngs, dtype=dtype), BasicBlock(out, out, 1, rngs=rngs, dtype=dtype)]
            width = out
        self.blocks = nnx.List(blocks)
        bound = 1 / math.sqrt(width)  # PyTorch's Linear bias: U(+-1/sqrt(fan_in))
        self.head = nnx.Linear(width, num_outputs, kernel_init=torch_kernel_init, dtype=dtype, rngs=rngs,
                               bias_init=lambda key, shape, dtype=jnp.float32: jax.random.uniform(
                                   key, shape, dtype, -bound, bound))

    def __call__(self, x, *, train: bool, dropout_key=None):
        x = x * 2 - 1  # Normalize(mean=.5, std=.5) of the [0, 1] image, as MedMNIST's transform
        x = nnx.relu(self.stem_bn(self.stem(x), use_running_average=not train))
        for block in self.blocks:
            x = block(x, train=train)
        return self.head(x.mean(axis=(1, 2)))  # global average pool, then the linear head
