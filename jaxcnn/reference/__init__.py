"""The derivation as the textbook writes it, readable top to bottom: the test oracle.

One module per layer family with fast lowerings -- ``conv`` (eqs. 4.2-4.5) and ``pool``
(eqs. 5.1-5.8) -- each pass a window gather (3.3) and a contraction, or a contraction and the
scatter-add (3.4), with the equation numbers of ``docs/derivation.md`` and the shapes.  No
switches and no lowerings: ``jaxcnn.lowering`` holds the fast forms, each proven equal to these
(``tests/test_lowerings.py``).  ``conv_transpose`` (eqs. 4.10-4.13) is ``conv``'s passes read
the other way round, each a call of ``conv`` on the adjoint convolution
(``tests/test_conv_transpose.py``).  The dense layer, the activations and the losses have no
lowering; their own modules are their reference.
"""
