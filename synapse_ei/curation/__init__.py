"""Curation: labelling synapses and splitting them by neuron, plain functions over DataFrames."""
