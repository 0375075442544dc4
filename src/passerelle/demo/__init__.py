"""Demo material: a synthetic customer churn dataset with controllable drift, and a model for it."""
