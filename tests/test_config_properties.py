"""Fuzzed config edits: the schema and the checks accept them or name the key (hypothesis)."""

from __future__ import annotations

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from paths import MINI, REPO
from synapse_ei.config import check
from synapse_ei.errors import DataError

SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"


def config_paths(config, prefix=()):
    """Every key path of a nested config."""
    for key, value in config.items():
        yield (*prefix, key)
        if isinstance(value, dict):
            yield from config_paths(value, (*prefix, key))
MINI_CONFIG = yaml.safe_load(MINI.read_text())
PATHS = list(config_paths(MINI_CONFIG))
bad_value = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=False), st.text(max_size=5),
    st.lists(st.integers(-2, 2), max_size=4), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)  # fmt: skip


@settings(max_examples=80, deadline=None)
@given(path=st.sampled_from(PATHS), value=bad_value)
def test_any_config_edit_validates_or_names_the_key(path, value):
    config = yaml.safe_load(MINI.read_text())
    node = config
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    try:
        validate(config, str(SCHEMA))
    except WorkflowError as error:
        assert path[-1] in str(error), (path, value, str(error)[-500:])
        return
    try:
        check(config)  # what the Snakefile checks next, before any job
    except DataError as error:
        assert path[-1] in str(error), (path, value, str(error))
