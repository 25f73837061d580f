"""A convolutional autoencoder on the bundled 8x8 digits: transposed convolutions, trained by hand.

    python examples/autoencoder.py [--fast] [--out DIR]

``jaxcnn.zoo.autoencoder`` squeezes each digit into a 2x2x8 code (two convolutions, two max
poolings) and paints it back with two transposed convolutions of stride 2 -- each the
convolution's input residual (eq. 4.5) run forward (eqs. 4.10-4.11), its backward a
convolution's forward and kernel gradient (eqs. 4.12-4.13).  ``jc.fit`` trains it under
``squared_error`` against the images themselves, with the hand-written backward, after
comparing it with ``jax.grad`` on one batch.

Prints ``jc.summary``, the gradient check and the held-out mean squared error beside two
baselines (every pixel its training mean; every image the mean image), and writes in DIR
(default ``figures``):

    autoencoder_reconstructions.png   ten held-out digits, their codes and reconstructions

``--fast`` (or ``JAXCNN_FAST=1``): three epochs, to see it run.
"""
import argparse
import os
import time

import numpy as np

import jaxcnn as jc
from jaxcnn import data, show, train, zoo


def mse(a, b) -> float:
    return float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))


def plot(path, images, codes, outputs):
    """Three rows: the digits, their codes (the 2x2x8 maps side by side) and the decoder's."""
    fig = show._figure(1.2 * len(images), 4.2)
    grid = fig.subplots(3, len(images))
    for j in range(len(images)):
        code = np.concatenate(list(np.moveaxis(codes[j], -1, 0)), axis=1)   # (2, 2 * 8)
        for row, (img, cmap) in enumerate(((images[j][..., 0], "gray_r"), (code, "viridis"),
                                           (outputs[j][..., 0], "gray_r"))):
            ax = grid[row, j]
            ax.imshow(img, cmap=cmap, vmin=0 if row != 1 else None, vmax=1 if row != 1 else None)
            show._no_ticks(ax)
        grid[0, j].set_title(f"digit {j}", fontsize=9)
    for row, label in enumerate(("input 8x8", "code 2x2x8", "decoded 8x8")):
        grid[row, 0].set_ylabel(label, fontsize=9)
    fig.suptitle("A convolutional autoencoder on held-out digits: two transposed convolutions "
                 "paint the code back", fontsize=10)
    return show._save(fig, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fast", action="store_true", help="three epochs")
    ap.add_argument("--out", default="figures", help="where the figure goes")
    args = ap.parse_args()
    fast = args.fast or os.environ.get("JAXCNN_FAST") == "1"
    epochs = 3 if fast else 60

    ds = data.load_digits()
    net = zoo.autoencoder(ds.image_shape)
    print(jc.summary(net, ds.image_shape))
    params, _ = train.init_params(net, ds.image_shape, seed=0)
    t = time.perf_counter()
    result = jc.fit(net, params, ds.x_train, ds.x_train, ds.x_test, ds.x_test,
                    loss=jc.squared_error, optimizer=train.make_optimizer("adam", 1e-2),
                    epochs=epochs, batch_size=32, seed=0, verbose=False)
    print(f"adam lr 0.01, {epochs} epochs in {time.perf_counter() - t:.1f} s (compilation "
          f"included); hand-written vs jax.grad before training: worst relative error "
          f"{result.summary['gradient_check_worst_relative_error']:.1e}")
    decoded = np.asarray(net.apply(result.params, ds.x_test, train=False))
    pixel_mean = np.full_like(ds.x_test, float(np.mean(ds.x_train)))
    image_mean = np.broadcast_to(np.mean(ds.x_train, axis=0), ds.x_test.shape)
    print(f"held-out mean squared error per pixel: {mse(decoded, ds.x_test):.4f} (every pixel "
          f"its training mean: {mse(pixel_mean, ds.x_test):.4f}; the mean image: "
          f"{mse(image_mean, ds.x_test):.4f})")

    encoder = jc.serial(*net.layers[:6])          # up to the second pooling: the code
    first = [int(np.flatnonzero(ds.y_test == d)[0]) for d in range(10)]
    codes = np.asarray(encoder.apply(result.params[:6], ds.x_test[first], train=False))
    os.makedirs(args.out, exist_ok=True)
    path = plot(os.path.join(args.out, "autoencoder_reconstructions.png"), ds.x_test[first],
                codes, decoded[first])
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
