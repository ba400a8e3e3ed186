"""Algebra on metric trees: Opposing Operation Simplification and the canonical rank form.

Two questions a search and a user ask about a formula:

* **Is there a simpler tree with the same scores?** :func:`simplify` rewrites the tree with the
  rules of :data:`RULES` (Pruner-Zero's Opposing Operation Simplification, non-negativity of
  ``W``/``G``/``X``, constant folding), bottom-up to a fixpoint. Every rule is *value
  preserving* under the protected semantics of the operators (``log`` adds 0.001, ``exp``
  clamps at 100, ``div`` divides by a whole-tensor norm ...): the simplified tree scores the
  same weights with the same values up to fp32 rounding. Patterns that look like identities but
  are not (``log(exp(x))``) are listed in :data:`KEPT` with the reason.
* **Does it prune the same weights as another formula?** Masks depend only on the order of the
  scores inside a comparison group, so strictly increasing maps of the whole metric do not
  matter. :func:`canonical` strips them from the sympy form of the simplified tree and hashes
  the rest: equal keys mean equal masks (in exact arithmetic; see :func:`canonical`).

This module is the entry point; the work is done in three modules:

* :mod:`pzshell.lang.rules`: the rule table, :data:`KEPT`, and the facts the rules use about a
  subtree (:func:`nonneg`, :func:`row_shaped`);
* :mod:`pzshell.lang.rewrite`: the simplifier that applies the rules (:func:`simplify`,
  :func:`explain`, :func:`rewrite_once`);
* :mod:`pzshell.lang.rank`: the sympy form and the canonical rank key (:func:`to_sympy`,
  :func:`rank_form`, :func:`canonical`, :func:`equivalent_known`).

Everything works on the immutable :class:`~pzshell.lang.tree.Node` and is cached per node.
"""

from __future__ import annotations

from .rank import (
    SYMPY_MAX_SIZE,
    CanonicalForm,
    canonical,
    canonical_signs,
    equivalent_known,
    rank_form,
    to_sympy,
)
from .rewrite import explain, rewrite_once, simplify
from .rules import KEPT, RULES, Kept, Rule, nonneg, row_shaped

__all__ = [
    "KEPT",
    "RULES",
    "SYMPY_MAX_SIZE",
    "CanonicalForm",
    "Kept",
    "Rule",
    "canonical",
    "canonical_signs",
    "equivalent_known",
    "explain",
    "nonneg",
    "rank_form",
    "rewrite_once",
    "row_shaped",
    "simplify",
    "to_sympy",
]
