"""Cutting 2D patches and 3D cubes around synapses, one spatially coherent shard at a time.

:func:`plan.check_positions` asks, before any cutout job, whether the positions fit the volume
at their stated resolution; :func:`plan.plan_shards` groups neighbouring synapses so a shard's
reads share chunks; :func:`shard.cut_shard` writes one shard's TIFF stacks, manifest and stats,
reading every chunk the shard needs once (:func:`readers.read_shard`; the :mod:`readers`
docstring describes the readers) and skipping, with the reason in the manifest, synapses out of the volume's bounds, in its holes or in blank regions;
:func:`gather.gather` joins the shards and refuses a dataset with an empty split or class or too
many skipped synapses; :func:`stacks.open_stack` is the checked reader the training data loader
uses. :mod:`volume` opens the EM volume and converts table positions to its voxels.

A shard stores each kind of cutout in one TIFF stack: ``2d.tif`` holds (N, Y, X), ``3d.tif``
(N, Z, Y, X), raw uint8 EM values exactly as stored (no normalisation), row ``stack_index`` of
the manifest per synapse. (Y, X) and (Z, Y, X) are the TIFF page convention; the transpose from
CloudVolume's XYZ happens in this package and only here. The stacks are uncompressed and
contiguous, so training memory-maps them and reads a batch with one slice per cutout, and any
TIFF reader opens them (Fiji: a stack of N x Z pages). One file per kind and shard, not one per
synapse: each byte is written once, and a cluster file system is spared millions of small files.
"""
