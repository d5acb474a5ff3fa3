"""synapse-ei: excitatory/inhibitory synapse classification from connectomics EM.

The science lives here as plain functions with explicit arguments; the Snakemake rules in
``workflow/rules`` call them through the short scripts in ``scripts/``.
"""

__version__ = "0.1.0"
