"""The two search stages and their operators: repair, warm start, evolution, surrogate, trust region."""
