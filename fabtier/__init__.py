"""fabtier: moves fab sensor readings through hot, warm, cold and frozen tiers.

This package holds the product's wiring: configuration, errors, the command line and the
process that runs the pipeline. The parts themselves live in the top-level packages
`ingest`, `tiers`, `lifecycle`, `analytics` and `simulator`.
"""

__version__ = "0.1.0"
