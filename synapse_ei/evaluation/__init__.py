"""Evaluating one model's predictions: metrics, bootstrap intervals, neuron calls, figures,
gallery."""
