"""The budget as a multiple-choice knapsack, solved exactly.

Notation: units u = 1..U, each takes one choice k = (bits index, rank index) of the ladders; choosing k
for u costs `budget.table[u, k]` (bytes, or bits for `bits_per_param`) and is predicted to add
`values[u, k]` to the score (lower is better). The problem

    minimise  Σ_u values[u, k_u]   subject to   constant + Σ_u table[u, k_u] <= limit

is a multiple-choice knapsack: NP-hard in general, small in practice (U x |bits| x |ranks| binaries;
224 units x 12 choices for an 8B model per linear), so HiGHS (`scipy.optimize.milp`) solves it to
optimality in well under a second. The answer is checked against `Budget.feasible` (the one tolerance),
and ties are broken towards the cheaper configuration by a cost term far below any value difference.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import csr_array, kron

from autoqra.memory import Budget, BudgetError
from autoqra.space import Config

TIE = 1e-9  # weight of the (normalised) cost in the objective: picks the cheaper of equal-valued optima


def solve(values: np.ndarray, budget: Budget) -> Config:
    """The configuration of least total `values` (shape (U, |bits|, |ranks|)) within the budget."""
    space, table = budget.space, np.asarray(budget.table, dtype=float)
    n, nb, nr = table.shape
    if values.shape != table.shape:
        raise ValueError(f"values of shape {values.shape}: must be the budget table's {table.shape}")
    if not np.isfinite(values).all():
        raise ValueError("values: every price must be finite")
    k = nb * nr
    cost = table.reshape(n, k)
    scale = max(float(np.abs(cost).max()), 1.0)
    spread = float(np.ptp(values)) or 1.0  # the optimum does not change with the values' scale; HiGHS's numerics do
    objective = ((values.reshape(n, k) - values.min()) / spread + TIE * cost / scale).ravel()
    one = LinearConstraint(kron(csr_array(np.eye(n)), csr_array(np.ones((1, k)))), 1, 1)
    room = budget.limit - budget.constant  # `Budget.feasible` checks the answer with its tolerance
    for margin in (0.0, 1e-9, 1e-6):  # HiGHS's own feasibility tolerance may let a row slip by a hair
        fits = LinearConstraint(csr_array(cost.reshape(1, -1) / scale), -np.inf, room / scale - margin)
        out = milp(objective, constraints=[one, fits], integrality=np.ones(n * k), bounds=Bounds(0, 1))
        if out.x is None:
            break
        choice = out.x.reshape(n, k).argmax(axis=1)
        config = space.decode(np.concatenate([choice // nr, choice % nr]))
        if budget.feasible(config):
            return config
    raise BudgetError(f"no configuration fits {budget.description} ({out.message})")
