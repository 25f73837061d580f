"""BatchNorm's backward, term by term, inside a residual net at initialisation, on the digits.

    python examples/batchnorm_backward.py [--out DIR]

The residual of a BatchNorm layer's input has three terms (``docs/derivation.md``, eq. 7.10):

    dx = (scale / (M sigma)) (M dy  -  sum dy  -  x_hat sum(dy x_hat))

-- the direct path through ``x_hat``, the path through the batch's mean, the path through its
variance (sums over the ``M = N H W`` entries of a channel).  The classic mistake keeps only
the first, ``dx = dy scale / sigma``, as if the statistics were constants.  The script builds a
residual net with BatchNorm (``jaxcnn.zoo.resnet_bn``), runs its hand-written backward on a
batch of digits down to the first BatchNorm, takes that layer's ``dy`` and cache, and prints
and draws the three terms for one channel: their sum is the layer's own backward, which equals
``jax.vjp``; the first term alone is far from it.  It writes, in DIR (default ``figures``):

    batchnorm_terms.png   dy, the three terms and dx of one channel of one example
"""
import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np

import jaxcnn as jc
from jaxcnn import data, train, zoo


def residual_at_first_batchnorm(net, params, x, labels):
    """``(bn, its params, its cache, dy)``: the hand-written backward (eq. 6.1) from the loss
    down to the output of the net's first BatchNorm (the stem's, layer 1)."""
    y, caches = net.forward(params, x)
    delta = jc.softmax_cross_entropy.delta(y, labels)
    for i in reversed(range(2, len(net.layers))):
        _, delta = net.layers[i].backward(params[i], caches[i], delta)
    return net.layers[1], params[1], caches[1], delta


def terms(bn_params, cache, dy):
    """The three terms of eq. 7.10, each already times ``scale / (M sigma)``, per entry."""
    scale = bn_params["scale"].reshape(1, 1, 1, -1)
    m = dy.shape[0] * dy.shape[1] * dy.shape[2]
    factor = scale * cache.inv_std / m
    direct = factor * m * dy
    through_mean = -factor * jnp.sum(dy, axis=(0, 1, 2), keepdims=True)
    through_var = -factor * cache.x_hat * jnp.sum(dy * cache.x_hat, axis=(0, 1, 2),
                                                  keepdims=True)
    return direct, jnp.broadcast_to(through_mean, dy.shape), through_var


def plot_terms(dy, parts, dx, channel, path):
    """One panel per map of one channel of the first example, each on its own symmetric colour
    scale (the terms differ by orders of magnitude), and the classic mistake's error."""
    from matplotlib.figure import Figure

    panels = [("dy (from above)", dy), ("M dy: through x_hat", parts[0]),
              ("- sum dy: through the mean", parts[1]),
              ("- x_hat sum(dy x_hat):\nthrough the variance", parts[2]), ("dx: the sum", dx),
              ("dx - (M dy term):\nwhat the classic mistake drops", dx - parts[0])]
    fig = Figure(figsize=(17, 3.6), layout="constrained")
    for ax, (title, a) in zip(fig.subplots(1, len(panels)), panels):
        a = np.asarray(a[0, :, :, channel])
        limit = float(np.max(np.abs(a))) or 1.0
        im = ax.imshow(a, cmap="coolwarm", vmin=-limit, vmax=limit)
        ax.set_title(title, fontsize=9)
        ax.set_xticks([]), ax.set_yticks([])
        fig.colorbar(im, ax=ax, shrink=0.75, format="%.0e")
    dropped = float(np.max(np.abs(dx - parts[0])) / np.max(np.abs(dx)))
    fig.suptitle(f"BatchNorm's backward (eq. 7.10), channel {channel} of the first example, each "
                 f"term times scale / (M sigma), each on its own scale.\nThe paths through the "
                 f"batch's mean and variance reach every entry; dropping them errs by "
                 f"{dropped:.1%} of dx here")
    fig.savefig(path, dpi=80)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="figures", help="directory for the figure")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)

    ds = data.load_digits()
    net = zoo.resnet_bn(ds.image_shape)
    params, _ = train.init_params(net, ds.image_shape)
    x, labels = jnp.asarray(ds.x_train[:64]), jnp.asarray(ds.y_train[:64])
    bn, bn_params, cache, dy = residual_at_first_batchnorm(net, params, x, labels)
    parts = terms(bn_params, cache, dy)
    dx = bn.backward(bn_params, cache, dy)[1]
    want = jax.vjp(lambda v: bn.apply(bn_params, v), net.layers[0].apply(params[0], x))[1](dy)[0]

    def rel(a, b):
        return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))

    print(f"digits, a batch of {x.shape[0]}; the first BatchNorm of resnet-bn: dy "
          f"{tuple(dy.shape)}, M = {dy.shape[0] * dy.shape[1] * dy.shape[2]} entries a channel")
    print(f"sum of the three terms vs BatchNorm.backward: max relative difference "
          f"{rel(sum(parts), dx):.1e}")
    print(f"BatchNorm.backward vs jax.vjp: max relative difference {rel(dx, want):.1e}")
    print(f"the direct term alone (the statistics taken as constants) vs jax.vjp: max relative "
          f"difference {rel(parts[0], want):.1e}")
    for name, p in zip(("through x_hat", "through the mean", "through the variance"), parts):
        print(f"  {name:22s} norm {float(jnp.linalg.norm(p)):.3e}")
    channel = int(jnp.argmax(jnp.sum(parts[2] * parts[2], axis=(0, 1, 2))))
    path = os.path.join(args.out, "batchnorm_terms.png")
    plot_terms(dy, parts, dx, channel, path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
