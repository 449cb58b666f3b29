"""Pseudonymization strategies for clinical tables: a declarative rule per column, group rules,
k-anonymity and l-diversity, applied and then verified by a pure columnar engine (Polars)."""
