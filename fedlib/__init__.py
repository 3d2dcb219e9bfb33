"""The leaf that ``strategies`` and ``attacks`` share: math and parameter declarations both need.

It imports only the standard library and torch, never ``fedsim``, ``strategies`` or
``attacks``, so either package can use it and still import nothing of fedsim (``params``,
``registry`` and importing ``heads`` need no torch, so the scenario checks and ``fedsim list``
use them cheaply):

* :mod:`fedlib.params`: declarative parameter constraints (``param(default, Real(lo=0))``)
  and the one validator that checks them (rules, attacks, and fedsim's probe tables) and the text ``fedsim list`` shows;
* :mod:`fedlib.heads`: the flattened linear-head layout (``[vec(W), b]``);
* :mod:`fedlib.distances`: pairwise squared distances and the Krum kernel;
* :mod:`fedlib.registry`: the name → class registry both packages keep, and ``did_you_mean``.
"""
