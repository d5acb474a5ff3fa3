"""Cutting 2D patches and 3D cubes around synapses from the EM volume, one shard at a time."""
