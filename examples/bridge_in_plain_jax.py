"""``jc.bridge``: the hand-written backward inside any JAX program (eq. 6.4).

    python examples/bridge_in_plain_jax.py [--fast] [--out DIR]

``f = jc.bridge(net)`` is, to JAX, an ordinary function ``(params, x) -> outputs``.  It is a
``jax.custom_vjp`` whose VJP is ``net.backward``, so ``jax.grad`` of any program that calls it
runs the hand-written derivation inside ``f`` and ordinary autodiff outside it.  The script:

1. writes a loss jaxcnn does not have, in plain ``jax.numpy`` -- label-smoothed cross-entropy
   plus an L2 penalty on the kernels -- and checks that ``jax.grad`` through the bridge equals
   ``jax.grad`` through ``net.apply`` (autodiff everywhere);
2. proves the bridge really runs the hand-written backward: plant a wrong ReLU backward (twice
   the slope) and the bridge's gradient changes, autodiff's does not;
3. trains with a plain optax loop over that loss (no ``jaxcnn.fit``);
4. differentiates with respect to the *pixels*: the residual goes down through every layer's
   backward to the image (eq. 4.5 at the first convolution) -- a saliency map;
5. shows that forward mode is not available: ``jax.jvp`` of a ``custom_vjp`` raises.

Writes DIR/bridge_saliency.png (default DIR: ``figures``).  ``--fast`` (or ``JAXCNN_FAST=1``):
fewer training steps.
"""
import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxcnn as jc
from jaxcnn import data, train

SMOOTHING, WEIGHT_DECAY = 0.1, 1e-4


def make_net(relu=jc.ReLU):
    return jc.serial(jc.Conv2D(16, 3, padding="SAME"), relu(), jc.MaxPool2D(2),
                     jc.Conv2D(32, 3, padding="SAME"), relu(), jc.MaxPool2D(2),
                     jc.Flatten(), jc.Dense(10))


def doubled_relu():
    """A ReLU whose backward is planted wrong: twice the slope.  Its forward is right."""
    relu = jc.ReLU()

    def backward(params, cache, delta):
        dparams, dx = relu.backward(params, cache, delta)
        return dparams, 2 * dx

    return relu._replace(backward=backward, name="ReLU (backward x2)")


def plain_loss(model):
    """A loss in plain jax.numpy around ``model(params, x) -> logits``."""

    def loss(params, x, labels):
        logits = model(params, x)
        targets = optax.smooth_labels(jax.nn.one_hot(labels, 10, dtype=logits.dtype), SMOOTHING)
        xent = jnp.mean(optax.softmax_cross_entropy(logits, targets))
        kernels = [p["w"] for p in params if isinstance(p, dict) and p["w"].ndim == 4]
        return xent + WEIGHT_DECAY * sum(jnp.sum(w * w) for w in kernels)

    return loss


def relative(a, b):
    a, b = jax.tree.leaves(a), jax.tree.leaves(b)
    return max(float(jnp.max(jnp.abs(u - v)) / jnp.max(jnp.abs(v))) for u, v in zip(a, b))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="fewer training steps")
    parser.add_argument("--out", default="figures", help="directory for the figure")
    args = parser.parse_args()
    fast = args.fast or os.environ.get("JAXCNN_FAST") == "1"

    ds = data.load_digits()
    net = make_net()
    params, _ = train.init_params(net, ds.image_shape)
    x, y = jnp.asarray(ds.x_train[:64]), jnp.asarray(ds.y_train[:64])

    # 1. the same plain loss, differentiated through the bridge and by autodiff
    bridged, autodiff = plain_loss(jc.bridge(net)), plain_loss(net.apply)
    g_bridge = jax.jit(jax.grad(bridged))(params, x, y)
    g_auto = jax.jit(jax.grad(autodiff))(params, x, y)
    print(f"1. jax.grad of a plain-JAX loss, through jc.bridge vs through net.apply: max "
          f"relative difference {relative(g_bridge, g_auto):.1e}")

    # 2. a planted mistake shows which backward runs
    wrong = make_net(doubled_relu)
    g_wrong = jax.jit(jax.grad(plain_loss(jc.bridge(wrong))))(params, x, y)
    g_wrong_auto = jax.jit(jax.grad(plain_loss(wrong.apply)))(params, x, y)
    print(f"2. with a ReLU backward planted wrong (x2): through the bridge the gradient moves "
          f"by {relative(g_wrong, g_auto):.2f} (relative); by autodiff by "
          f"{relative(g_wrong_auto, g_auto):.1e} -- the bridge runs the hand-written backward")

    # 3. a plain optax loop
    optimizer = optax.adam(2e-3)

    @jax.jit
    def step(params, opt_state, x, y):
        value, grads = jax.value_and_grad(bridged)(params, x, y)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    opt_state, rng = optimizer.init(params), np.random.default_rng(0)
    steps = 60 if fast else 400
    for i in range(steps):
        batch = rng.choice(len(ds.x_train), 32, replace=False)
        params, opt_state, value = step(params, opt_state, ds.x_train[batch], ds.y_train[batch])
        if i % (steps // 4) == 0 or i == steps - 1:
            print(f"3. step {i:4d}: loss {float(value):.4f}")
    logits = jax.jit(jc.bridge(net))(params, jnp.asarray(ds.x_test))
    accuracy = float(jnp.mean(jnp.argmax(logits, axis=1) == jnp.asarray(ds.y_test)))
    print(f"   test accuracy after {steps} steps: {100 * accuracy:.2f}%")

    # 4. the gradient of each digit's true-class logit with respect to its pixels
    def logit(x, label, model):
        return model(params, x[None])[0, label]

    xs, labels = jnp.asarray(ds.x_test[:8]), jnp.asarray(ds.y_test[:8])
    def saliency_of(model):
        return jax.jit(jax.vmap(lambda x, label: jax.grad(logit)(x, label, model)))

    saliency = saliency_of(jc.bridge(net))(xs, labels)
    saliency_auto = saliency_of(net.apply)(xs, labels)
    print(f"4. d logit / d pixels through the bridge vs autodiff: max relative difference "
          f"{relative(saliency, saliency_auto):.1e}")

    # 5. forward mode
    try:
        jax.jvp(lambda x: jc.bridge(net)(params, x), (xs,), (xs,))
    except TypeError as err:
        print(f"5. jax.jvp through the bridge: {type(err).__name__}: {str(err).splitlines()[0]}")

    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "bridge_saliency.png")
    plot(np.asarray(xs), np.asarray(saliency), np.asarray(labels), path)
    print(f"wrote {path}")


def plot(images, saliency, labels, path):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 3.4), layout="constrained")
    axes = fig.subplots(2, len(images))
    lim = float(np.max(np.abs(saliency)))
    for k, (ax_img, ax_sal) in enumerate(axes.T):
        ax_img.imshow(images[k, :, :, 0], cmap="gray_r")
        ax_img.set_title(f"digit {labels[k]}", fontsize=10)
        image = ax_sal.imshow(saliency[k, :, :, 0], cmap="RdBu_r", vmin=-lim, vmax=lim)
        for ax in (ax_img, ax_sal):
            ax.set_xticks([])
            ax.set_yticks([])
    axes[1, 0].set_ylabel("d logit / d x", fontsize=10)
    fig.colorbar(image, ax=axes[1, :].tolist(), shrink=1.0, label="d logit / d x")
    fig.suptitle("Which pixels raise the true class's logit: jax.grad with respect to the "
                 "input, through jc.bridge (red: more ink there raises it)")
    fig.savefig(path, dpi=80)


if __name__ == "__main__":
    main()
