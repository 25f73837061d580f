"""Fast forms of the reference derivation (``jaxcnn.reference``), each proven equal to it.

- ``xla``: XLA's convolution instructions for eqs. 4.2, 4.4, 4.5 (what autodiff emits);
- ``toeplitz``: the convolution's passes as matrix products with a banded matrix (4.6-4.8);
- ``phases``: the strided input residual by stride phases (4.9);
- ``winograd``: 3x3 convolutions in Winograd's tiles, F(2x2, 3x3), all three passes (4.14-4.17);
- ``pool``: pooling's sums and spreads without stacking the windows (5.1, 5.2, 5.9), and max
  pooling by ``lax.reduce_window``;
- ``plan``: which form computes each pass of a convolution (one table of limits);
- ``dispatch``: a convolution's passes in the forms its plan names.
"""
