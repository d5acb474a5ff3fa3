"""The embedded synthetic dataset: the tables' generator and the EM renderer."""
