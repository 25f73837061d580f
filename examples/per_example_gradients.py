"""Per-example gradients: ``jax.vmap`` over the hand-written backward (eq. 6.3).

    python examples/per_example_gradients.py [--fast] [--out DIR]

No layer couples the examples of a batch, so the gradient of example ``n`` alone is
``value_and_grad`` on a batch of one, and ``jax.vmap`` runs it for every example in one compiled
call:

    f = jc.value_and_grad(net, jc.softmax_cross_entropy)
    losses, grads = jax.vmap(lambda x, t: f(params, x[None], t[None]))(xs, ts)

The script trains the default digits net briefly, computes the per-example gradients of the 360
test digits and checks two facts: their mean is the batch gradient (the 1/N lives in the loss's
delta, eq. 2.6), and each equals ``jax.grad`` of that example's loss (autodiff, vmapped the same
way).  Then it uses them: the norm ``|g_n|`` is how hard example ``n`` pulls on the parameters
(what per-example clipping in DP-SGD bounds), and the misclassified digits pull hardest.

Writes DIR/per_example_gradients.png (default DIR: ``figures``): the histogram of the norms,
right and wrong predictions apart, and the eight digits with the largest norms.
``--fast`` (or ``JAXCNN_FAST=1``): one epoch of training.
"""
import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np

import jaxcnn as jc
from jaxcnn import data, train, zoo


def vector(tree):
    """Every parameter gradient of one example, flattened into one vector."""
    return jnp.concatenate([leaf.ravel() for leaf in jax.tree.leaves(tree)])


def relative(a, b):
    return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))


def plot(norms, wrong, images, labels, predicted, path):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2), layout="constrained")
    left, right = fig.subfigures(1, 2, width_ratios=[1, 1.25])
    ax = left.subplots()
    bins = np.logspace(np.log10(norms.min()), np.log10(norms.max()), 30)
    ax.hist(norms[~wrong], bins=bins, alpha=0.75, label=f"right ({int((~wrong).sum())})")
    ax.hist(norms[wrong], bins=bins, alpha=0.85, color="#d62728",
            label=f"wrong ({int(wrong.sum())})")
    ax.set(xscale="log", xlabel="per-example gradient norm |g_n|", ylabel="test digits",
           title="how hard each test digit pulls on the parameters")
    ax.legend()
    axes = right.subplots(2, 4)
    for ax, n in zip(axes.ravel(), np.argsort(norms)[::-1][:8]):
        ax.imshow(images[n, :, :, 0], cmap="gray_r")
        ax.set_xticks([])
        ax.set_yticks([])
        color = "#d62728" if wrong[n] else "black"
        ax.set_title(f"label {labels[n]}, net says {predicted[n]}\n|g| = {norms[n]:.2f}",
                     fontsize=9, color=color)
    k = int(wrong[np.argsort(norms)[::-1][:8]].sum())
    right.suptitle(f"the eight largest norms: {k} of them misclassified (red)")
    fig.savefig(path, dpi=80)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="one epoch of training")
    parser.add_argument("--out", default="figures", help="directory for the figure")
    args = parser.parse_args()
    fast = args.fast or os.environ.get("JAXCNN_FAST") == "1"

    ds = data.load_digits()
    net = zoo.small(ds.image_shape)
    params, _ = train.init_params(net, ds.image_shape)
    params = jc.fit(net, params, ds.x_train, ds.y_train, epochs=1 if fast else 3,
                    verbose=False).params
    xs, ts = jnp.asarray(ds.x_test), jnp.asarray(ds.y_test)

    f = jc.value_and_grad(net, jc.softmax_cross_entropy)
    per_example = jax.jit(jax.vmap(lambda x, t: f(params, x[None], t[None])))
    losses, grads = per_example(xs, ts)
    print(f"per-example gradients of {len(xs)} test digits: one array per parameter with a "
          f"leading axis of {len(xs)}, e.g. the first kernel's {grads[0]['w'].shape}")

    # 1. their mean is the batch gradient: each g_n is a mean over a batch of one
    _, batch = jax.jit(f)(params, xs, ts)
    rows = jax.vmap(vector)(grads)                       # (examples, parameters)
    print(f"mean of the per-example gradients vs the batch gradient: max relative difference "
          f"{relative(jnp.mean(rows, axis=0), vector(batch)):.1e}")

    # 2. each is jax.grad of that example's loss
    def loss(p, x, t):
        return jc.softmax_cross_entropy.value(net.apply(p, x[None]), t[None])

    auto = jax.jit(jax.vmap(jax.grad(loss), in_axes=(None, 0, 0)))(params, xs, ts)
    print(f"hand-written vs jax.grad, per example: max relative difference "
          f"{relative(rows, jax.vmap(vector)(auto)):.1e}")

    # 3. use them: the norm of each example's gradient
    norms = np.asarray(jnp.linalg.norm(rows, axis=1))
    predicted = np.asarray(jnp.argmax(jax.jit(net.apply)(params, xs), axis=1))
    wrong = predicted != ds.y_test
    print(f"gradient norm: median {np.median(norms):.3f} over the {int((~wrong).sum())} right "
          f"predictions" + (f", {np.median(norms[wrong]):.3f} over the {int(wrong.sum())} wrong "
                            f"ones" if wrong.any() else ""))
    top = np.argsort(norms)[::-1][:8]
    print(f"the 8 largest norms: {int(wrong[top].sum())} of them misclassified")

    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "per_example_gradients.png")
    plot(norms, wrong, ds.x_test, ds.y_test, predicted, path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
