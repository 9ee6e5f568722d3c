"""tuner's benchmark suite: ``python -m bench`` lists the benchmarks, ``python -m bench <name> [args...]`` runs one
(bench/README.md: what each answers)."""
