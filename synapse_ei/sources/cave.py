"""The ``cave`` source: MICrONS-style tables queried through CAVEclient at a pinned version.

The cell-type table is read whole (a reference table comes joined to its nucleus table, as
caveclient asks for it); the synapse table only for the presynaptic root ids of its neurons,
``batch_size`` root ids per query, only the columns the workflow uses, and the per-neuron cap
applied to each answer as it arrives. Every position comes back in 4x4x40 nm voxels
(``desired_resolution``), whatever the table's native resolution.

The materialization server cuts an answer at its row limit (``QUERY_LIMIT_SIZE``, 200,000 on the
public deployment) and says so only in a ``Warning`` response header, which caveclient (8.x)
logs on the ``caveclient`` logger. Every query sends an explicit ``limit``; an answer that holds
``limit`` rows, or whose header says it was cut, is re-queried in smaller pieces, so a cut table
is never returned. A 429 (the server's per-user rate limit) is waited out and retried.

Synapses with ``pre_pt_root_id == 0`` and autapses are kept: the label stage drops and counts
them, so the counts of every stage add up.
"""

from __future__ import annotations

import logging
import os
import re
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from importlib import metadata as importlib_metadata
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import requests

from synapse_ei import tables
from synapse_ei.curation.sampling import cap_per_group, hashed_keys
from synapse_ei.errors import DataError
from synapse_ei.sources import SourceTables

logger = logging.getLogger(__name__)

#: Environment variable read for the CAVE token before CAVEclient's secret file
#: (caveclient 8.2.1 itself reads no environment variable).
TOKEN_ENV_VAR = "CAVE_TOKEN"

#: Every position is requested in these nm-per-voxel units (XYZ), the house table convention.
DESIRED_RESOLUTION = tuple(float(v) for v in tables.CAVE_POSITION_RESOLUTION)

MINNIE65_EM_PATH = (
    "precomputed://https://bossdb-open-data.s3.amazonaws.com/iarpa_microns/minnie/minnie65/em"
)
#: Public EM of datastacks whose image source needs no Google credentials.
DEFAULT_EM_PATHS = {
    "minnie65_public": MINNIE65_EM_PATH,
    "minnie65_phase3_v1": MINNIE65_EM_PATH,
}

DEFAULT_PROOFREADING_TABLE = "proofreading_status_and_strategy"

#: The public server's row limit (MaterializationEngine config.py ``QUERY_LIMIT_SIZE``): the
#: default ``limit`` sent with every query.
SERVER_ROW_LIMIT = 200_000

#: Longest wait honoured from a 429's ``Retry-After`` (seconds): a rate-limit window is a
#: minute or so; a longer ask is more likely a misconfigured proxy than worth holding a job for.
MAX_RETRY_AFTER_SECONDS = 300.0

#: Suggested label mappings for MICrONS cell-type tables: ``column`` holds the class, ``classes``
#: maps its values to 'excitatory'/'inhibitory' (unmapped values, e.g. glia, are not neurons).
#: Value sets are those the MICrONS tutorial's annotation-table pages publish for
#: minnie65_public (github.com/AllenInstitute/microns_tutorial,
#: tutorial_book/_annotation_tables/); ``cell_types`` lists the finer types found in
#: ``cell_type`` for reference.
CELL_TYPE_TABLES: dict[str, dict[str, Any]] = {
    "aibs_metamodel_celltypes_v661": {
        "column": "classification_system",
        "classes": {"excitatory_neuron": tables.EXCITATORY, "inhibitory_neuron": tables.INHIBITORY},
        "cell_types": {
            tables.EXCITATORY: ["23P", "4P", "5P-IT", "5P-ET", "5P-NP", "6P-IT", "6P-CT"],
            tables.INHIBITORY: ["BC", "BPC", "MC", "NGC"],
        },
    },
    "aibs_metamodel_mtypes_v661_v2": {
        "column": "classification_system",
        "classes": {"excitatory": tables.EXCITATORY, "inhibitory": tables.INHIBITORY},
        "cell_types": {
            tables.EXCITATORY: [
                "L2a", "L2b", "L3a", "L3b", "L3c", "L4a", "L4b", "L4c", "L5a", "L5b", "L5ET",
                "L5NP", "L6a", "L6b", "L6c", "L6CT", "L6wm",
            ],
            tables.INHIBITORY: ["DTC", "ITC", "PTC", "STC"],
        },
    },
    "allen_v1_column_types_slanted_ref": {
        "column": "classification_system",
        "classes": {
            "aibs_coarse_excitatory": tables.EXCITATORY,
            "aibs_coarse_inhibitory": tables.INHIBITORY,
        },
        "cell_types": {
            tables.EXCITATORY: ["23P", "4P", "5P-IT", "5P-ET", "5P-NP", "6P-IT", "6P-CT"],
            tables.INHIBITORY: ["BC", "BPC", "MC", "Unsure"],
        },
    },
    "baylor_log_reg_cell_type_coarse_v1": {
        "column": "cell_type",
        "classes": {"excitatory": tables.EXCITATORY, "inhibitory": tables.INHIBITORY},
        "cell_types": {tables.EXCITATORY: ["excitatory"], tables.INHIBITORY: ["inhibitory"]},
    },
}

# How the server says it cut an answer at its limit (materializationengine/blueprints/client/):
# the frozen query endpoints (common.py, generate_simple_query_dataframe and
# generate_complex_query_dataframe) send '201 - "Limited query to {limit} rows'; the live query
# (api2.py, assemble_live_query_dataframe) "result has N entries, which is equal or more than
# limit of L there may be more results which are not shown". The other phrasings guard against
# rewordings in other versions.
TRUNCATION_PATTERN = re.compile(
    r"limited\s+query\s+to\s+\d+\s+rows|more\s+than\s+(the\s+)?limit|may\s+be\s+more\s+results"
    r"|limited\s+to\s+\d+\s+rows|dataframe\s+exceeds",
    re.IGNORECASE,
)

T = TypeVar("T")


@dataclass
class QueryStats:
    """What the queries cost: written into the provenance."""

    queries: int = 0
    truncated_queries: int = 0
    retries: int = 0
    #: 429s (the server's rate limit) that reached the source; caveclient's session has already
    #: retried one with a Retry-After 3 times itself (urllib3 Retry, total=3).
    throttled: int = 0
    #: Synapse rows that came back, before the per-neuron cap.
    synapses_queried: int = 0
    final_batch_size: int | None = None
    server_warnings: list[str] = field(default_factory=list)


def load(
    datastack: str,
    version: int,
    synapse_table: str,
    cell_type_table: str,
    em_path: str | None = None,
    server_address: str | None = None,
    batch_size: int = 500,
    max_rows_per_query: int = SERVER_ROW_LIMIT,
    proofread_axons_only: bool = False,
    proofreading_table: str | None = None,
    max_synapses_per_neuron: int | None = None,
    seed: int = 0,
    client: Any = None,
    retries: int = 3,
    neuron_column: str | None = None,
    neuron_values: Sequence[str] | None = None,
    backoff_seconds: float = 2.0,
) -> SourceTables:
    """Query the cell-type and synapse tables of ``datastack`` at materialization ``version``.

    Neurons are the cell-type rows whose ``neuron_column`` value is in ``neuron_values``
    (defaults: the mapping in :data:`CELL_TYPE_TABLES` for known tables, else every row with a
    non-zero root id). Their outgoing synapses are queried ``batch_size`` root ids at a time, only
    the columns of :func:`synapse_query_columns`; every query sends ``max_rows_per_query`` as its
    ``limit``, and an answer of that many rows (or one the server says it cut) is re-queried with
    half the root ids, down to one. ``proofread_axons_only`` keeps presynaptic cells whose axon is
    proofread in ``proofreading_table``; ``max_synapses_per_neuron`` keeps a seeded random sample
    per presynaptic cell (:func:`cap_synapses_per_neuron`, applied to each answer as it arrives).
    Network errors and the server's rate limit are retried ``retries`` times (backing off, or
    waiting what a 429's ``Retry-After`` asks). ``client`` replaces the CAVEclient built from
    ``datastack``/``server_address`` (tests). Positions are 4x4x40 nm voxels.

    Its length is its 17 settings (the ``dataset.cave`` keys) and their description; the steps
    are :func:`_caller`, :func:`_query_neurons`, :func:`query_synapses` and :func:`_provenance`.
    """
    _check_settings(version, batch_size, max_rows_per_query, max_synapses_per_neuron, retries)
    version = int(version)
    if client is None:
        client = connect(datastack, version, server_address, retries, backoff_seconds)
    call = _caller(client, server_address, retries, backoff_seconds)
    _check_client_version(client, version, datastack, call.server)

    neurons = _query_neurons(
        client, datastack, version, cell_type_table, call, max_rows_per_query, neuron_column,
        neuron_values,
        (proofreading_table or DEFAULT_PROOFREADING_TABLE) if proofread_axons_only else None,
    )  # fmt: skip
    synapses = query_synapses(
        client, synapse_table, version, neurons.root_ids, call, batch_size, max_rows_per_query,
        max_synapses_per_neuron=max_synapses_per_neuron, seed=seed,
    )
    synapses = _tidy_synapses(synapses, synapse_table)
    if synapses.empty:
        raise DataError(
            f"CAVE table {synapse_table!r} (datastack {datastack}, version {version}): no "
            f"synapses from the {len(neurons.root_ids)} presynaptic neurons of "
            f"{cell_type_table!r}. Check that the synapse table belongs to this datastack."
        )
    resolved_em_path = em_path or _default_em_path(client, datastack, call)
    provenance = _provenance(
        client, datastack, version, call, synapse_table, cell_type_table, resolved_em_path,
        neurons, synapses, max_synapses_per_neuron, seed, batch_size, max_rows_per_query,
    )  # fmt: skip
    return SourceTables(
        synapses=synapses,
        cell_types=neurons.cell_types,
        em_path=resolved_em_path,
        position_resolution=DESIRED_RESOLUTION,  # type: ignore[arg-type]
        provenance=scrub(provenance, call.token),
    )


@dataclass
class Neurons:
    """The cell-type table as queried and the presynaptic neurons picked from it."""

    cell_types: pd.DataFrame
    #: The column and values that mark a neuron (None: every row with a root id).
    column: str | None
    values: list[str] | None
    #: Sorted unique non-zero root ids whose synapses are queried.
    root_ids: np.ndarray
    proofreading: dict[str, Any]


def _caller(
    client: Any, server_address: str | None, retries: int, backoff_seconds: float
) -> CaveCaller:
    """The :class:`CaveCaller` of ``client``'s server and token; no token is a
    :class:`DataError` saying how to set one."""
    token = _client_token(client)
    server = _server_of(client, server_address)
    if not token:
        raise DataError(_no_token_message(server))
    return CaveCaller(
        server=server, token=token, retries=retries, backoff=backoff_seconds, stats=QueryStats()
    )


def _query_neurons(
    client: Any,
    datastack: str,
    version: int,
    cell_type_table: str,
    call: CaveCaller,
    max_rows_per_query: int,
    neuron_column: str | None,
    neuron_values: Sequence[str] | None,
    proofreading_table: str | None,
) -> Neurons:
    """Read the cell-type table whole and pick its neurons (:func:`_neuron_rule`); with a
    ``proofreading_table``, only those whose axon is proofread there. No neuron left is a
    :class:`DataError`."""
    raw = query_whole_table(client, cell_type_table, version, call, max_rows_per_query)
    cell_types = _tidy_cell_types(raw, cell_type_table, neuron_column)
    column, values = _neuron_rule(cell_type_table, neuron_column, neuron_values, cell_types)
    root_ids = _neuron_root_ids(cell_types, column, values)
    proofread_info: dict[str, Any] = {"applied": False}
    if proofreading_table is not None:
        proofread = query_whole_table(
            client, proofreading_table, version, call, max_rows_per_query
        )
        axon_ids, proofread_info = proofread_axon_root_ids(proofread, proofreading_table)
        root_ids = np.intersect1d(root_ids, axon_ids)
        proofread_info["neurons_kept"] = int(len(root_ids))
    if len(root_ids) == 0:
        raise DataError(
            f"CAVE table {cell_type_table!r} (datastack {datastack}, version {version}): no "
            f"neurons to query (column {column!r} in {values!r}"
            f"{', axon proofread' if proofreading_table is not None else ''}). Check the "
            "cell-type table, its class column/values, or turn off proofread_axons_only."
        )
    return Neurons(cell_types, column, values, root_ids, proofread_info)


def _provenance(
    client: Any,
    datastack: str,
    version: int,
    call: CaveCaller,
    synapse_table: str,
    cell_type_table: str,
    em_path: str,
    neurons: Neurons,
    synapses: pd.DataFrame,
    max_synapses_per_neuron: int | None,
    seed: int,
    batch_size: int,
    max_rows_per_query: int,
) -> dict[str, Any]:
    """What the query asked for and what it cost, for ``provenance.json`` (keys in the order
    the file has always had)."""
    stats = call.stats
    return {
        "source": "cave",
        "datastack": datastack,
        "server_address": call.server,
        "materialization_version": version,
        "version_timestamp": _version_timestamp(client, version, call),
        "caveclient_version": _caveclient_version(),
        "tables": {
            "synapses": synapse_table,
            "cell_types": cell_type_table,
            "proofreading": neurons.proofreading.get("table"),
        },
        "desired_resolution": list(DESIRED_RESOLUTION),
        "em_path": em_path,
        "viewer": viewer_provenance(client, call),
        "neurons": {"column": neurons.column,
                    "values": sorted(neurons.values) if neurons.values else None,
                    "root_ids_queried": int(len(neurons.root_ids))},
        "proofreading": neurons.proofreading,
        "rows": {
            "cell_types": int(len(neurons.cell_types)),
            "synapses_queried": int(stats.synapses_queried),
            "synapses": int(len(synapses)),
        },
        "max_synapses_per_neuron": max_synapses_per_neuron,
        "seed": int(seed),
        "synapses_dropped_by_cap": int(stats.synapses_queried - len(synapses)),
        "batch_size": int(batch_size),
        "max_rows_per_query": max_rows_per_query,
        "queries": stats.queries,
        "truncated_queries_split": stats.truncated_queries,
        "final_batch_size": stats.final_batch_size,
        "network_retries": stats.retries,
        "rate_limited_responses": stats.throttled,
        "server_notices": sorted(set(stats.server_warnings)),
        "kept_for_label_stage": "pre_pt_root_id == 0 rows and autapses (dropped and counted there)",
    }


# --- connection -------------------------------------------------------------------------------


def connect(
    datastack: str,
    version: int,
    server_address: str | None = None,
    retries: int = 3,
    backoff_seconds: float = 2.0,
) -> Any:
    """Build a ``CAVEclient`` pinned to ``version``, with the token from ``$CAVE_TOKEN`` or
    CAVEclient's secret file; a missing token is a :class:`DataError` saying how to set one."""
    from caveclient import CAVEclient
    from caveclient.auth import AuthClient
    from caveclient.datastack_lookup import handle_server_address
    from caveclient.endpoints import default_global_server_address

    server = (
        server_address
        or handle_server_address(datastack, None, do_log=False)
        or default_global_server_address
    )
    token = os.environ.get(TOKEN_ENV_VAR) or AuthClient(server_address=server).token
    if not token:
        raise DataError(_no_token_message(server))
    call = CaveCaller(
        server=server, token=token, retries=retries, backoff=backoff_seconds, stats=QueryStats()
    )
    try:
        return call(
            f"connecting to datastack {datastack!r}",
            lambda: CAVEclient(
                datastack, server_address=server, auth_token=token, version=version,
                write_server_cache=False,
            ),
        )
    except ValueError as error:  # CAVEclient's answer to a version the datastack lacks
        raise DataError(
            f"CAVE server {server}, datastack {datastack!r}: {scrub(str(error), token)} "
            "Set dataset.cave.version to an available materialization version."
        ) from error


def _client_token(client: Any) -> str | None:
    try:
        return client.auth.token
    except AttributeError:
        return None


def _server_of(client: Any, server_address: str | None) -> str:
    try:
        return str(client.server_address)
    except AttributeError:
        return str(server_address)


def _no_token_message(server: str) -> str:
    return (
        f"CAVE server {server}: no auth token found. Get one at {server}/auth/api/v1/create_token "
        "(see client.auth.get_new_token()), then save it once with "
        f"`CAVEclient(server_address=\"{server}\").auth.save_token(token=..., overwrite=True)` "
        "(it goes to ~/.cloudvolume/secrets/; without overwrite=True, save_token refuses to "
        "replace a token already saved there, e.g. an expired one) or export it as "
        f"${TOKEN_ENV_VAR}."
    )


def _check_client_version(client: Any, version: int, datastack: str, server: str) -> None:
    pinned = getattr(client, "version", None)
    if pinned is not None and int(pinned) != version:
        raise DataError(
            f"CAVE server {server}, datastack {datastack!r}: the client is pinned to version "
            f"{pinned} but dataset.cave.version is {version}; build the client with "
            f"version={version}."
        )


def _version_timestamp(client: Any, version: int, call: CaveCaller) -> str | None:
    stamp = getattr(client, "timestamp", None)
    if stamp is None or getattr(client, "version", None) != version:
        try:
            stamp = call("reading the version timestamp",
                         lambda: client.materialize.get_timestamp(version))
        except Exception as error:  # optional: the version number alone pins the data
            logger.warning("no timestamp for version %d: %s", version,
                           scrub(str(error), call.token)[:200])
            return None
    return stamp.isoformat() if hasattr(stamp, "isoformat") else str(stamp)


def _default_em_path(client: Any, datastack: str, call: CaveCaller) -> str:
    if datastack in DEFAULT_EM_PATHS:
        return DEFAULT_EM_PATHS[datastack]
    source = call("reading the image source",
                  lambda: client.info.image_source(format_for="cloudvolume"))
    return public_https_path(str(source))


def viewer_provenance(client: Any, call: CaveCaller) -> dict[str, Any]:
    """The datastack's Neuroglancer sources, from CAVEclient's info service
    (``InfoServiceClient``): image and segmentation sources, the viewer resolution (nm per
    voxel, XYZ) and the viewer site; what :func:`synapse_ei.viewer.viewer_sources` builds the
    links from.

    The image source is taken raw: the info service stores it as Neuroglancer reads it
    (``precomputed://gs://...``), and caveclient 8.2.1's ``format_for="neuroglancer"`` returns
    None for every precomputed source (``format_utils.format_neuroglancer`` tests
    ``scheme == "graphene" or "https"``, always true, then ``format_graphene`` knows only
    http(s) and graphene). The segmentation is graphene, which that formatter does handle.
    """
    info = client.info
    resolution = call("reading the viewer resolution", info.viewer_resolution)
    return {
        "image_source": call("reading the image source", info.image_source),
        "segmentation_source": call("reading the segmentation source",
                                    lambda: info.segmentation_source(format_for="neuroglancer")),
        "viewer_resolution": [float(v) for v in resolution],
        "viewer_site": call("reading the viewer site", info.viewer_site),
    }


def public_https_path(path: str) -> str:
    """``precomputed://gs://bucket/p`` as ``precomputed://https://storage.googleapis.com/bucket/p``.

    cloud-volume reads a gs:// path with Google credentials (which a compute node rarely has)
    but a public bucket's https URL without any. caveclient 8.2.1's ``format_for="cloudvolume"``
    converts a bare ``gs://`` source but returns ``precomputed://gs://...`` unchanged
    (``format_utils.format_cloudvolume``), which is how info services store image sources.
    """
    for prefix in ("precomputed://", ""):
        if path.startswith(prefix + "gs://"):
            return f"{prefix or 'precomputed://'}https://storage.googleapis.com/" + path[
                len(prefix + "gs://"):]
    return path


def _caveclient_version() -> str | None:
    try:
        return importlib_metadata.version("caveclient")
    except importlib_metadata.PackageNotFoundError:
        return None


# --- retries and token scrubbing --------------------------------------------------------------


def scrub(value: Any, token: str | None) -> Any:
    """Replace ``token`` by '***' in every string inside ``value`` (dicts, lists, strings)."""
    if not token:
        return value
    if isinstance(value, str):
        return value.replace(token, "***")
    if isinstance(value, Mapping):
        return {scrub(k, token): scrub(v, token) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(scrub(v, token) for v in value)
    return value


def _is_transient(error: BaseException) -> bool:
    if isinstance(error, requests.HTTPError):
        response = error.response
        return response is None or response.status_code >= 500 or response.status_code == 429
    return isinstance(
        error,
        (requests.ConnectionError, requests.Timeout, requests.exceptions.RetryError,
         requests.exceptions.ChunkedEncodingError),
    )


@dataclass
class CaveCaller:
    """Runs CAVE requests: retries network errors with exponential backoff, turns every failure
    into a :class:`DataError` naming the server and never the token, and counts in ``stats``."""

    server: str
    token: str | None
    retries: int
    backoff: float
    stats: QueryStats

    def __call__(self, what: str, request: Callable[[], T]) -> T:
        from caveclient.base import AuthException

        attempt = 0
        throttled = 0
        while True:
            wait: float | None = None
            try:
                return request()
            except AuthException:
                raise DataError(_token_rejected(self.server, what)) from None
            except requests.HTTPError as error:
                status = error.response.status_code if error.response is not None else None
                if status in (401, 403):
                    raise DataError(_token_rejected(self.server, what)) from None
                if not _is_transient(error):
                    raise DataError(
                        f"CAVE server {self.server}: {what} was refused ({status}: "
                        f"{scrub(str(error), self.token)[:500]}). Check the datastack, table "
                        "and version names in dataset.cave."
                    ) from None
                if status == 429:
                    throttled += 1
                    self.stats.throttled += 1
                    wait = retry_after_seconds(error.response)
                failure: BaseException = error
            except requests.RequestException as error:
                if not _is_transient(error):
                    raise DataError(
                        f"CAVE server {self.server}: {what} failed "
                        f"({type(error).__name__}: {scrub(str(error), self.token)[:500]})."
                    ) from None
                failure = error
            if attempt >= self.retries:
                if throttled:
                    raise DataError(
                        f"CAVE server {self.server}: {what}: the server throttled the run "
                        f"(HTTP 429, its per-user rate limit) on {throttled} of {attempt + 1} "
                        "attempt(s). Wait a few minutes and rerun (finished stages are kept); "
                        "if it keeps happening, raise dataset.cave.retries or "
                        "dataset.cave.batch_size (fewer, larger queries)."
                    ) from None
                raise DataError(
                    f"CAVE server {self.server}: {what} failed after {attempt + 1} attempt(s) "
                    f"({type(failure).__name__}: {scrub(str(failure), self.token)[:300]}). "
                    "Check the network connection, that your CAVE token is valid, and the "
                    "server status; then rerun."
                ) from None
            # A 429 without Retry-After gets the same backoff as a network error.
            delay = wait if wait is not None else self.backoff * 2**attempt
            logger.warning("%s: %s; retrying in %.1f s", self.server, what, delay)
            self.stats.retries += 1
            attempt += 1
            time.sleep(delay)


def retry_after_seconds(response: Any, now: float | None = None) -> float | None:
    """The wait a response's ``Retry-After`` asks for (RFC 9110: seconds or an HTTP date),
    capped at :data:`MAX_RETRY_AFTER_SECONDS`; None without a readable one."""
    value = (getattr(response, "headers", None) or {}).get("Retry-After")
    if value is None:
        return None
    value = str(value).strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS)


def _token_rejected(server: str, what: str) -> str:
    return (
        f"CAVE server {server}: {what} was refused: the auth token is missing, invalid or lacks "
        "access to this datastack (or its terms of service are not accepted). "
        + _no_token_message(server).split(": ", 1)[1]
    )


# --- truncation-aware queries -----------------------------------------------------------------


class _WarningCollector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def _server_warnings() -> Iterator[list[str]]:
    """Collect what caveclient reports from the server's ``Warning`` header during the block."""
    cave_logger = logging.getLogger("caveclient")
    collector = _WarningCollector()
    # caveclient.base logs the header; a quiet level set by the user must not hide truncation.
    quiet = [logging.getLogger(name) for name in ("caveclient", "caveclient.base")]
    old_levels = [log.level for log in quiet]
    for log in quiet:
        if log.getEffectiveLevel() > logging.WARNING:
            log.setLevel(logging.WARNING)
    cave_logger.addHandler(collector)
    messages: list[str] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield messages
    finally:
        cave_logger.removeHandler(collector)
        for log, level in zip(quiet, old_levels):
            log.setLevel(level)
    messages.extend(collector.messages)
    messages.extend(str(w.message) for w in caught)


def _query_once(
    client: Any,
    table: str,
    version: int,
    call: CaveCaller,
    max_rows: int,
    what: str,
    **filters: Any,
) -> tuple[pd.DataFrame, bool]:
    """One ``query_table`` call; returns the frame and whether the server cut it.

    The server flags a cut answer only when it holds exactly the limit it applied, and older or
    proxied servers may drop the header: an answer of ``max_rows`` rows counts as cut either way.
    """
    with _server_warnings() as messages:
        frame = call(
            what,
            lambda: client.materialize.query_table(
                table,
                materialization_version=version,
                split_positions=True,
                desired_resolution=list(DESIRED_RESOLUTION),
                limit=max_rows,
                metadata=False,
                **filters,
            ),
        )
    call.stats.queries += 1
    cut = [m for m in messages if TRUNCATION_PATTERN.search(m)]
    call.stats.server_warnings.extend(m for m in messages if m not in cut)
    truncated = bool(cut) or len(frame) >= max_rows
    if truncated:
        call.stats.truncated_queries += 1
        logger.info("%s was cut at the row limit (%d rows); splitting it", what, len(frame))
    return frame, truncated


def query_whole_table(
    client: Any,
    table: str,
    version: int,
    call: CaveCaller,
    max_rows_per_query: int = SERVER_ROW_LIMIT,
) -> pd.DataFrame:
    """Every row of ``table``; a cut answer is re-queried by ranges of the annotation ``id``.

    A range is split at the median id of what came back, so each split makes progress whether
    the server returns rows in id order or not. For a reference table (caveclient joins it to
    its target table), ``id`` and the id filters are the reference table's own; the target's
    id comes back as ``id_ref``.
    """
    pending = [(None, None)]  # [lo, hi) id ranges; None = unbounded
    parts: list[pd.DataFrame] = []
    while pending:
        lo, hi = pending.pop()
        filters: dict[str, Any] = {}
        if lo is not None:
            filters["filter_greater_equal_dict"] = {"id": int(lo)}
        if hi is not None:
            filters["filter_less_dict"] = {"id": int(hi)}
        where = f"table {table!r} ids [{lo if lo is not None else '-inf'}, {hi or 'inf'})"
        frame, truncated = _query_once(
            client, table, version, call, max_rows_per_query, f"querying {where}", **filters
        )
        if not truncated:
            parts.append(frame)
            continue
        if "id" not in frame.columns or frame.empty:
            raise DataError(
                f"CAVE {where}: the answer was cut at the server's row limit and the table has "
                "no 'id' column to page by. Ask the server admins for a higher limit."
            )
        ids = np.sort(frame["id"].to_numpy(dtype=np.int64))
        low = int(ids[0]) if lo is None else int(lo)
        high = int(ids[-1]) + 1 if hi is None else int(hi)
        if high - low <= 1:
            raise DataError(
                f"CAVE {where}: one annotation id came back with more rows than the row limit; "
                "the table is not keyed by 'id'. Ask the server admins for a higher limit."
            )
        middle = int(ids[len(ids) // 2])
        middle = min(max(middle, low + 1), high - 1)
        # Unbounded ends stay unbounded: ids beyond what came back may exist.
        pending.extend([(middle, hi), (lo, middle)])
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def synapse_query_columns() -> list[str]:
    """The synapse columns the workflow uses, as the server's ``select_columns`` names them: a
    position by its column (``ctr_pt_position``, which comes back split in ``_x/_y/_z``); each
    ``*_root_id`` brings its ``*_supervoxel_id`` (query_manager.py ``select_column``)."""
    names: list[str] = []
    for column in tables.SYNAPSE_COLUMNS:
        name = re.sub(r"_[xyz]$", "", column) if "_position_" in column else column
        if name not in names:
            names.append(name)
    return names


def query_synapses(
    client: Any,
    table: str,
    version: int,
    root_ids: Sequence[int] | np.ndarray,
    call: CaveCaller,
    batch_size: int = 500,
    max_rows_per_query: int = SERVER_ROW_LIMIT,
    max_synapses_per_neuron: int | None = None,
    seed: int = 0,
    columns: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Synapses whose ``pre_pt_root_id`` is in ``root_ids``, ``batch_size`` ids per query, each
    answer reduced to the house synapse columns as it arrives.

    Only ``columns`` are asked for (default :func:`synapse_query_columns`; ``[]`` asks for all).
    A cut answer is re-queried with half as many root ids, and later batches keep the smaller
    size (neighbouring batches are usually as heavy, so this saves re-querying each one); one
    root id whose synapses alone exceed the limit is a :class:`DataError` naming it. With
    ``max_synapses_per_neuron``, each whole answer is capped as it arrives: a root id's synapses
    all come in one answer and the sample depends only on their ids and ``seed``, so the result
    is the one capping the whole table would give, without holding it.
    """
    ids = [int(v) for v in root_ids]
    select = synapse_query_columns() if columns is None else list(columns)
    size = batch_size
    start = 0
    parts: list[pd.DataFrame] = []
    while start < len(ids):
        batch = ids[start : start + size]
        frame, truncated = _query_once(
            client, table, version, call, max_rows_per_query,
            f"querying table {table!r} for {len(batch)} presynaptic root id(s)",
            filter_in_dict={"pre_pt_root_id": batch},
            **({"select_columns": select} if select else {}),
        )
        if not truncated:
            call.stats.synapses_queried += len(frame)
            if not frame.empty:
                frame = tidy_synapse_answer(frame, table)
            if max_synapses_per_neuron is not None and not frame.empty:
                frame = cap_synapses_per_neuron(frame, max_synapses_per_neuron, seed)
            parts.append(frame)
            start += len(batch)
            continue
        if len(batch) == 1:
            raise DataError(
                f"CAVE table {table!r} (version {version}): presynaptic root id {batch[0]} alone "
                f"has more synapses than the server's row limit ({len(frame)} rows came back), "
                "so its synapses cannot be read completely. It is most likely a merge error: "
                "drop that cell from the cell-type table, or ask the server admins for a higher "
                "limit (and raise dataset.cave.max_rows_per_query to match)."
            )
        size = len(batch) // 2
    call.stats.final_batch_size = size
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


# --- tables -----------------------------------------------------------------------------------


def _tidy_cell_types(frame: pd.DataFrame, table: str, neuron_column: str | None) -> pd.DataFrame:
    # A reference table comes joined to its nucleus table; the server suffixes only the names
    # both tables have (id_ref, valid_ref, created_ref), so the nucleus's pt_root_id keeps its
    # name (query_manager.py execute_query; the MICrONS tutorial's recorded answers).
    where = f"CAVE cell-type table {table!r}"
    tables.require_columns(frame, tables.CELL_TYPE_REQUIRED, where)
    keep = list(tables.CELL_TYPE_COLUMNS)
    if neuron_column and neuron_column not in keep:
        keep.append(neuron_column)
    keep = tables.present(frame, keep)
    frame = tables.to_int64(frame[keep], ["pt_root_id"], where)
    return frame.sort_values("pt_root_id", kind="stable").reset_index(drop=True)


def _neuron_rule(
    table: str,
    neuron_column: str | None,
    neuron_values: Sequence[str] | None,
    cell_types: pd.DataFrame,
) -> tuple[str | None, list[str] | None]:
    known = CELL_TYPE_TABLES.get(table)
    column = neuron_column or (known["column"] if known else None)
    values = list(neuron_values) if neuron_values is not None else (
        list(known["classes"]) if known and column == known["column"] else None
    )
    if column is not None and column not in cell_types.columns:
        raise DataError(
            f"CAVE cell-type table {table!r}: no column {column!r} to pick neurons by; it has "
            f"{list(cell_types.columns)}. Set dataset.cave.neuron_column to one of them."
        )
    if column is not None and values is None:
        raise DataError(
            f"dataset.cave.neuron_values: give the values of {column!r} that mark neurons in "
            f"{table!r} (it holds {sorted(map(str, cell_types[column].unique()))[:20]})."
        )
    return column, values


def _neuron_root_ids(
    cell_types: pd.DataFrame, column: str | None, values: list[str] | None
) -> np.ndarray:
    rows = cell_types
    if column is not None and values is not None:
        rows = rows[rows[column].astype(str).isin([str(v) for v in values])]
    ids = rows["pt_root_id"].to_numpy(dtype=np.int64)
    return np.unique(ids[ids != 0])


def proofread_axon_root_ids(frame: pd.DataFrame, table: str) -> tuple[np.ndarray, dict[str, Any]]:
    """Root ids whose axon is marked proofread (``status_axon`` true) in a proofreading table.

    ``pt_root_id`` (the id at the queried version) is used, falling back to ``valid_id``.
    """
    where = f"CAVE proofreading table {table!r}"
    id_column = "pt_root_id" if "pt_root_id" in frame.columns else "valid_id"
    tables.require_columns(frame, [id_column, "status_axon"], where)
    status = frame["status_axon"]
    if pd.api.types.is_bool_dtype(status):
        proofread = status.fillna(False).astype(bool)
    else:
        proofread = status.astype(str).str.strip().str.lower().isin(["t", "true", "1", "yes"])
    ids = tables.to_int64(frame.loc[proofread, [id_column]], [id_column], where)[id_column]
    ids = np.unique(ids.to_numpy(dtype=np.int64))
    ids = ids[ids != 0]
    info = {
        "applied": True,
        "table": table,
        "id_column": id_column,
        "rows": int(len(frame)),
        "axon_proofread_cells": int(len(ids)),
    }
    if {"pt_root_id", "valid_id"} <= set(frame.columns):
        # Edited since proofreading: still counted, but worth knowing.
        changed = frame.loc[proofread, "pt_root_id"] != frame.loc[proofread, "valid_id"]
        info["edited_since_proofreading"] = int(changed.sum())
    return ids, info


def tidy_synapse_answer(frame: pd.DataFrame, table: str) -> pd.DataFrame:
    """One answer's columns as the house tables hold them: the workflow's columns only, ids and
    positions int64. Done per answer, so the query never holds a column it drops."""
    where = f"CAVE synapse table {table!r}"
    tables.require_columns(frame, tables.SYNAPSE_REQUIRED, where)
    keep = tables.present(frame, tables.SYNAPSE_COLUMNS)
    frame = frame[keep]
    # desired_resolution can leave fractions when the native resolution differs: nearest voxel.
    fractional = [c for c in keep if c.endswith(("_x", "_y", "_z"))
                  and pd.api.types.is_float_dtype(frame[c])]
    if fractional:
        frame = frame.assign(**{c: frame[c].round() for c in fractional})
    integer = [c for c in keep if c != "size"]
    return tables.to_int64(frame, integer, where)


def _tidy_synapses(frame: pd.DataFrame, table: str) -> pd.DataFrame:
    """Every answer together: each synapse once, sorted by id."""
    where = f"CAVE synapse table {table!r}"
    if frame.empty:
        return pd.DataFrame(columns=tables.SYNAPSE_REQUIRED)
    repeated = frame["id"].duplicated()
    if repeated.any():
        raise DataError(
            f"{where}: synapse id {int(frame['id'][repeated].iloc[0])} came back twice; the "
            "batches overlapped. Report this: root ids should be queried once each."
        )
    return frame.sort_values("id", kind="stable").reset_index(drop=True)


def cap_synapses_per_neuron(synapses: pd.DataFrame, max_per_neuron: int, seed: int) -> pd.DataFrame:
    """Keep at most ``max_per_neuron`` synapses per presynaptic root id, a seeded random sample
    keyed by :func:`~synapse_ei.curation.sampling.hashed_keys` of their ids: a neuron's sample
    depends only on its own synapses and ``seed``, so capping batch by batch keeps the rows
    capping the whole table keeps. The result is sorted by synapse id."""
    keys = hashed_keys(synapses["id"].to_numpy(dtype=np.int64), seed)
    return cap_per_group(
        synapses, "pre_pt_root_id", max_per_neuron, keys, "dataset.cave.max_synapses_per_neuron"
    )


def _check_settings(
    version: Any,
    batch_size: int,
    max_rows_per_query: int,
    max_synapses_per_neuron: int | None,
    retries: int,
) -> None:
    checks = [
        ("version", version,
         isinstance(version, (int, np.integer)) and not isinstance(version, bool)
         and int(version) > 0, "a materialization version number, e.g. 1300"),
        ("batch_size", batch_size, isinstance(batch_size, int) and batch_size >= 1,
         "a whole number >= 1 (root ids per synapse query)"),
        ("max_rows_per_query", max_rows_per_query,
         isinstance(max_rows_per_query, int) and not isinstance(max_rows_per_query, bool)
         and max_rows_per_query >= 1,
         f"a whole number >= 1 (the server's row limit, {SERVER_ROW_LIMIT} on the public one)"),
        ("max_synapses_per_neuron", max_synapses_per_neuron,
         max_synapses_per_neuron is None or (isinstance(max_synapses_per_neuron, int)
                                             and max_synapses_per_neuron >= 1),
         "null or a whole number >= 1"),
        ("retries", retries, isinstance(retries, int) and retries >= 0, "a whole number >= 0"),
    ]
    for key, value, ok, expected in checks:
        if not ok:
            raise DataError(f"dataset.cave.{key}: {value!r} is not {expected}.")
