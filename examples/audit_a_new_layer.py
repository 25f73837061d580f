"""Write a new layer with its derivation, audit it, then plant classic mistakes and watch the
audit name the layer at fault.

    python examples/audit_a_new_layer.py [--out DIR]

Writes ``audit_planted_mistakes.png`` to DIR (default ``figures``): each layer's worst relative
error against ``jax.vjp``, for the correct net and for each planted mistake.

The new layer is LeCun's scaled tanh, ``a = A tanh(S z)`` with ``A = 1.7159``, ``S = 2/3``.
Its derivation, in the style of docs/derivation.md (eq. 2.2 with its own f'):

    f'(z) = A S (1 - tanh(S z)^2) = S (A - a^2 / A)        -- from the cached output a,
    delta_z = delta_a * f'(z).
"""
import argparse
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import jaxcnn as jc

A, S = 1.7159, 2.0 / 3.0


class ScaledTanhCache(NamedTuple):
    a: jax.Array


def ScaledTanh(slope=lambda a: S * (A - a * a / A)) -> jc.Layer:
    """``a = A tanh(S z)``; backward ``delta * S (A - a^2 / A)`` from the cached output."""

    def init(key, input_shape):
        return (), tuple(input_shape)

    def forward(params, x, *, key=None, train=True):
        a = A * jnp.tanh(S * x)
        return a, ScaledTanhCache(a)

    def backward(params, cache, delta):
        return (), delta * slope(cache.a)

    def apply(params, x, *, key=None, train=True):
        return forward(params, x)[0]

    return jc.Layer(init, forward, backward, apply, "ScaledTanh")


def net_with(activation, conv=None):
    return jc.serial(conv or jc.Conv2D(4, 3), activation, jc.AvgPool2D(2),
                     jc.Conv2D(6, 3, padding="SAME"), jc.Sigmoid(), jc.Flatten(), jc.Dense(10))


def audit(title, net):
    params, _ = net.init(jax.random.key(0), (10, 10, 1))
    params = jax.tree.map(lambda p: p.astype(jnp.float64), params)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(4, 10, 10, 1)))
    labels = jnp.asarray(rng.integers(0, 10, size=4))
    report = jc.check_grads(net, jc.softmax_cross_entropy, params, x, labels)
    print(f"== {title}\n{report}\n")
    return report


def plot(reports, path):
    """Each layer's worst relative error against jax.vjp, per audit, on a log scale."""
    from matplotlib.figure import Figure   # pip install 'jaxcnn[train]'

    fig = Figure(figsize=(9, 3.6))
    ax = fig.add_subplot()
    names = [row.name for row in next(iter(reports.values())).rows
             if row.reference == "jax.vjp" and row.quantity == "dx"]
    width = 0.8 / len(reports)
    for k, (title, report) in enumerate(reports.items()):
        worst = [max(max(r.max_rel for r in report.rows_of(i) if r.reference == "jax.vjp"),
                     1e-17) for i in range(len(names))]
        ax.bar(np.arange(len(names)) + k * width, worst, width, label=title)
    ax.axhline(jc.audit.TOLERANCES["float64"], color="k", ls="--", lw=1, label="tolerance")
    ax.set_yscale("log")
    ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2,
                  [f"{i}: {n}" for i, n in enumerate(names)], rotation=20)
    ax.set_ylabel("worst relative error vs jax.vjp")
    ax.set_title("jc.check_grads pins each planted mistake on its own layer")
    ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=80)
    return path


def main(out="figures"):
    jax.config.update("jax_enable_x64", True)
    reports = {}

    print("== 1. the new layer alone, against jax.vjp and float64 finite differences")
    print(jc.check_layer(ScaledTanh(), (5, 5, 3), finite_differences=True), "\n")

    reports["correct"] = audit("2. the new layer inside a network", net_with(ScaledTanh()))

    # A classic slip: the derivative written as if f were the plain tanh, 1 - a^2.
    wrong = reports["ScaledTanh f' = 1 - a^2"] = audit(
        "3. mistake planted: f' written as 1 - a^2 (the unscaled tanh's)",
        net_with(ScaledTanh(slope=lambda a: 1 - a * a)))
    print(f"-> first_bad_layer = {wrong.first_bad_layer}\n")

    # Another: the sigmoid's derivative written as a instead of a (1 - a).
    sigmoid = jc.Sigmoid()
    bad_sigmoid = sigmoid._replace(backward=lambda p, cache, delta: ((), delta * cache.a))
    net = net_with(ScaledTanh())
    layers = list(net.layers)
    layers[4] = bad_sigmoid
    wrong = reports["sigmoid' = a"] = audit("4. mistake planted: sigmoid' written as a",
                                            jc.serial(*layers))
    print(f"-> first_bad_layer = {wrong.first_bad_layer}\n")

    # And the kernel gradient written as a true convolution of the input with delta instead of
    # the correlation of eq. 4.4: the flip put in the wrong place rotates it by 180 degrees.
    conv = jc.Conv2D(4, 3)

    def rotated_kernel_gradient(params, cache, delta):
        grads, dx = conv.backward(params, cache, delta)
        return {**grads, "w": grads["w"][::-1, ::-1]}, dx

    wrong = reports["kernel gradient rotated"] = audit(
        "5. mistake planted: kernel gradient rotated by 180 degrees",
        net_with(ScaledTanh(), conv._replace(backward=rotated_kernel_gradient)))
    print(f"-> first_bad_layer = {wrong.first_bad_layer}")

    print(f"\n== Figure\n{plot(reports, os.path.join(out, 'audit_planted_mistakes.png'))}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Write, audit and break a new layer.")
    parser.add_argument("--out", default="figures", help="where the figure goes")
    main(parser.parse_args().out)
