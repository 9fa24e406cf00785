"""routes.yaml and budgets.yaml: parsed once into frozen objects, validated with paths."""
