"""What trained models look at, every seed at once: conv feature maps, first-layer filters, dense-unit
templates, Grad-CAM (CNNs) and input-gradient saliency (dense networks).

    models = load_trained("runs/my_study")                 # flaxray.study.trained
    t = models["cnn_conv"]
    maps = attribution_maps(t.config.arch, t.params, t.model_state, images)    # (seeds, N, H, W)
    feats = conv_activations(t.config.arch, t.params, t.model_state, images)   # {layer: (seeds, N, h, w, c)}
    filters = first_filters(t.config.arch, t.params)                           # (seeds, 3, 3, filters)

Each map is a pure function of one seed's (params, model_state, images), `jax.vmap`ped over the
leading seed axis of the params, so seed k's map is the map of seed k alone. The models run in
inference mode (BatchNorm's moving averages, no dropout), so every image is independent of the
others in its batch. The forward pass here is the model cut into its layers by the model interface
(`flaxray.models.kind.Pieces`: blocks [start, stop), head), so that the training path stays as it is.

With C >= 3 classes the score explained is each image's predicted class's logit (binary: the one
logit). `num_classes=None` reads the class count off a sequential model's head; pass it for a
registered module. Registered modules (`flaxray.models.register`, e.g. resnet18) are opaque here:
flaxray does not know their layers, so they get input-gradient saliency (through the module's own
call) and no Grad-CAM, conv activations, first-layer filters or dense templates (empty / None). A
Keras model that is a chain of layers (a Sequential, or a functional model without branches) is cut
into them by its kind (`Pieces.convs`, `Pieces.labels`): its 2-D convolutions get Grad-CAM and feature
maps, of its output (a probability, where its last layer squashes); it has no first-layer filters or
dense templates here, and a Keras model of any other shape gets saliency.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flaxray import models
from flaxray.errors import FlaxrayError
from flaxray.models import Model, Pieces, Variables, conv, is_registered, parse_arch

CONV_KINDS = ("conv", "sep")


def _model(arch: str, params, model_state, input_shape, num_classes: int | None = None) -> tuple[Pieces, Model, Variables]:
    """(the layers, the model, its variables) of one seed: `flaxray.models.model` and its `pieces`."""
    if num_classes is None:  # a sequential head's width says it: 1 logit for two classes, else C
        width = params["head"]["kernel"].shape[-1] if isinstance(params, dict) and "head" in params else 1
        num_classes = 2 if width == 1 else width
    model = models.model(arch, tuple(input_shape), num_classes=num_classes)
    variables = Variables(params, model_state)
    return (None if model.pieces is None else model.pieces(variables)), model, variables


def keras_pieces(arch: str, input_shape, num_classes: int | None = None) -> Pieces | None:
    """A Keras model's layers as its kind cuts them (with the template's own values), or None when it is
    not a chain of layers."""
    if input_shape is None:
        raise FlaxrayError(f"{arch}: a Keras model's layers are known on an image shape; pass input_shape")
    model = models.model(arch, tuple(input_shape), num_classes=num_classes or 2)
    return None if model.pieces is None else model.pieces(model.init(None))


def conv_layers(arch: str, input_shape=None, num_classes: int | None = None) -> list[int]:
    """Indices (into the model's blocks) of the conv and separable-conv layers; none for a registered module.
    A Keras model's need the image shape (H, W, C)."""
    if models.is_keras(arch):
        cut = keras_pieces(arch, input_shape, num_classes)
        return list(cut.convs) if cut else []
    if is_registered(arch):
        return []
    return [i for i, layer in enumerate(parse_arch(arch)) if layer.kind in CONV_KINDS]


def is_cnn(arch: str, input_shape=None, num_classes: int | None = None) -> bool:
    return bool(conv_layers(arch, input_shape, num_classes))


def labels(arch: str, input_shape=None, num_classes: int | None = None) -> list[str]:
    """Each block in words (a spec's layers, a Keras chain's classes and names); none for an opaque model."""
    if models.is_keras(arch):
        cut = keras_pieces(arch, input_shape, num_classes)
        return list(cut.labels) if cut else []
    return [] if is_registered(arch) else [str(layer) for layer in parse_arch(arch)]


def score(logits):
    """The logit each image's map explains, (N,): the one logit (binary), else the predicted class's."""
    if logits.ndim == 1:
        return logits
    return jnp.take_along_axis(logits, jnp.argmax(logits, axis=-1)[:, None], axis=-1)[:, 0]


def rescale(images):
    """uint8 images as the model sees them (`Sequential` divides by 255 first)."""
    return images.astype(jnp.float32) / 255.0


def logits(arch: str, params, model_state, images, num_classes: int | None = None):
    """One seed's explained logits (`score`), through the model's pieces (equal to its own call; tested)."""
    _, model, variables = _model(arch, params, model_state, images.shape[1:], num_classes)
    return score(model.call(variables, rescale(images)))


def layer_outputs(arch: str, params, model_state, images, layers, num_classes: int | None = None) -> tuple:
    """One seed's outputs of the blocks `layers` (indices, increasing) on uint8 `images`."""
    pieces, _, _ = _model(arch, params, model_state, images.shape[1:], num_classes)
    x, outputs, start = rescale(images), [], 0
    for i in layers:
        x = pieces.blocks(x, start, i + 1)
        outputs.append(x)
        start = i + 1
    return tuple(outputs)


def grad_cam(arch: str, params, model_state, images, layer: int | None = None, num_classes: int | None = None):
    """One seed's Grad-CAM (Selvaraju et al. 2017) of the logit at block `layer` (default: the last conv
    layer), upsampled bilinearly to the image: relu(sum_c w_c A_c), w_c = spatial mean of d logit / d A_c.
    (N, H, W), >= 0."""
    convs = conv_layers(arch, images.shape[1:], num_classes)
    if not convs:
        raise FlaxrayError(f"Grad-CAM needs a model with conv layers flaxray knows; {arch!r} has none "
                           "(use saliency, or attribution_maps, which picks it)")
    layer = convs[-1] if layer is None else layer
    pieces, _, _ = _model(arch, params, model_state, images.shape[1:], num_classes)
    feature_map = pieces.blocks(rescale(images), 0, layer + 1)
    # Images are independent in inference mode, so the gradient of the summed logits holds each
    # image's own gradient.
    grads = jax.grad(lambda a: score(pieces.head(pieces.blocks(a, layer + 1))).sum())(feature_map)
    weights = grads.mean(axis=(1, 2))  # (N, C)
    cam = jax.nn.relu(jnp.einsum("nhwc,nc->nhw", feature_map, weights))
    return jax.image.resize(cam, (cam.shape[0], *images.shape[1:3]), "bilinear")


def input_gradients(arch: str, params, model_state, images, num_classes: int | None = None):
    """One seed's d logit / d pixel, pixels in [0, 1] as the model sees them: (N, H, W, C)."""
    _, model, variables = _model(arch, params, model_state, images.shape[1:], num_classes)
    return jax.grad(lambda x: score(model.call(variables, x)).sum())(rescale(images))


def saliency(arch: str, params, model_state, images, num_classes: int | None = None):
    """One seed's input-gradient saliency (Simonyan et al. 2014): max over channels of |d logit / d pixel|,
    (N, H, W)."""
    return jnp.abs(input_gradients(arch, params, model_state, images, num_classes)).max(axis=-1)


def method(arch: str, input_shape=None, num_classes: int | None = None) -> str:
    """What `attribution_maps` computes for `arch`, in words (a Keras model's need the image shape)."""
    if models.is_keras(arch):
        cut = keras_pieces(arch, input_shape, num_classes)
        if cut is None:
            return ("input-gradient saliency |d output / d pixel| (a Keras model that is not a chain of layers: "
                    "no Grad-CAM or feature maps, which need its layers one by one)")
        if cut.convs:
            return f"Grad-CAM of the output at layer {cut.convs[-1]} ({cut.labels[cut.convs[-1]]})"
        return "input-gradient saliency |d output / d pixel|"
    layers = conv_layers(arch)
    if is_registered(arch):
        return ("input-gradient saliency |d logit / d pixel| (a registered module: no Grad-CAM, feature maps, "
                "filters or templates, which need its layers one by one)")
    if not layers:
        return "input-gradient saliency |d logit / d pixel|"
    return f"Grad-CAM at layer {layers[-1]} ({parse_arch(arch)[layers[-1]]})"


def _vmapped(fn, arch: str, extra=()):
    """`fn` jitted and vmapped over seeds, once per form of the convolutions (`conv.form`, read when traced)."""
    return _vmapped_in(fn, arch, extra, conv.form())


@functools.lru_cache(maxsize=32)
def _vmapped_in(fn, arch: str, extra, layers: str):
    return jax.jit(jax.vmap(functools.partial(fn, arch, **dict(extra)), in_axes=(0, 0, None)))


def _batched(fn, params, model_state, images, batch_size: int, progress, desc: str):
    """`fn` (vmapped over seeds) over `images` in batches of `batch_size`, concatenated on the image axis
    (axis 1 of every leaf); a tqdm bar when `progress` and there are several batches."""
    from tqdm.auto import tqdm

    starts = range(0, len(images), batch_size)
    parts = [jax.device_get(fn(params, model_state, jnp.asarray(images[s:s + batch_size])))
             for s in tqdm(starts, desc=desc, unit="batch", disable=not progress or len(starts) < 2, leave=False)]
    return jax.tree.map(lambda *p: np.concatenate(p, axis=1), *parts)


def attribution_maps(arch: str, params, model_state, images, *, batch_size: int = 64, progress: bool = False,
                     num_classes: int | None = None):
    """Every seed's map of every image, (seeds, N, H, W) numpy: Grad-CAM at the last conv layer for a CNN,
    input-gradient saliency for a dense network or a registered module (`method(arch)` says which)."""
    images = np.asarray(images)
    fn = _vmapped(grad_cam if is_cnn(arch, images.shape[1:], num_classes) else saliency, arch,
                  (("num_classes", num_classes),))
    return _batched(fn, params, model_state, np.asarray(images), batch_size, progress, f"maps {arch}")


def conv_activations(arch: str, params, model_state, images, *, batch_size: int = 64,
                     num_classes: int | None = None) -> dict[int, np.ndarray]:
    """{block index: (seeds, N, h, w, channels)} of every conv layer's output (after its relu)."""
    images = np.asarray(images)
    layers = tuple(conv_layers(arch, images.shape[1:], num_classes))
    if not layers:
        return {}
    fn = _vmapped(layer_outputs, arch, (("layers", layers), ("num_classes", num_classes)))
    return dict(zip(layers, _batched(fn, params, model_state, np.asarray(images), batch_size, False, "")))


def first_filters(arch: str, params) -> np.ndarray | None:
    """The first conv layer's 3x3 kernels as they act on the image, (seeds, 3, 3, filters), summed over the
    input channels (exact for grey images, whose channels are equal); a separable layer's depthwise and
    pointwise kernels multiplied out. None when the model has no conv layer, or is a Keras model."""
    if models.is_keras(arch):
        return None
    layers = conv_layers(arch)
    if not layers:
        return None
    block = params["blocks"][layers[0]]
    if "kernel" in block:  # Conv2D: (seeds, 3, 3, in, filters)
        kernel = np.asarray(block["kernel"])
    else:  # SeparableConv2D: depthwise (seeds, 3, 3, in, 1) times pointwise (seeds, 1, 1, in, filters)
        kernel = np.einsum("sijc,scf->sijcf", np.asarray(block["depthwise_kernel"])[..., 0],
                           np.asarray(block["pointwise_kernel"])[:, 0, 0])
    return kernel.sum(axis=3)


def dense_templates(arch: str, params, input_shape) -> np.ndarray | None:
    """Each unit of a dense network's first layer as an image: its weights on the pixels, (seeds, units, H, W),
    summed over the channels. None unless the first layer with weights is a dense layer on the image."""
    if is_registered(arch):
        return None
    kinds = [layer.kind for layer in parse_arch(arch)]
    first = next((i for i, k in enumerate(kinds) if k not in ("bn", "dropout", "flatten")), None)
    if first is None or kinds[first] != "dense":
        return None
    kernel = np.asarray(params["blocks"][first]["dense"]["kernel"])  # (seeds, H*W*C, units), NHWC flattened
    h, w, c = input_shape
    return kernel.reshape(kernel.shape[0], h, w, c, -1).sum(axis=3).transpose(0, 3, 1, 2)


def inspect_group(trained, images, *, shown_images: int = 1, batch_size: int = 64, progress: bool = False) -> dict:
    """Everything `flaxray.inspect.report` draws and counts for one group of `flaxray.study.trained.load_trained`,
    as numpy: the attribution maps of every image (seeds, N, H, W), the conv layers' outputs for the first
    `shown_images` images ({block: (seeds, shown, h, w, c)}), the first-layer filters and the dense templates.
    The class count comes from `trained.config.num_classes` or `trained.class_names` when they exist."""
    arch, images = trained.config.arch, np.asarray(images)
    num_classes = getattr(trained.config, "num_classes", None) or len(getattr(trained, "class_names", ()) or ()) or None
    layers = labels(arch, images.shape[1:], num_classes)
    return {
        "arch": arch,
        "method": method(arch, images.shape[1:], num_classes),
        "seeds": list(trained.seeds),
        "maps": attribution_maps(arch, trained.params, trained.model_state, images, batch_size=batch_size,
                                 progress=progress, num_classes=num_classes),
        "activations": {i: (layers[i], a) for i, a in conv_activations(
            arch, trained.params, trained.model_state, images[:shown_images], batch_size=batch_size,
            num_classes=num_classes).items()},
        "filters": first_filters(arch, trained.params),
        "templates": dense_templates(arch, trained.params, images.shape[1:]),
    }
