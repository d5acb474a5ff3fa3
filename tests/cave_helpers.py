"""An offline MaterializationEngine for CAVEclient: real caveclient code talks to it by `responses`.

It answers what caveclient 8.2.1's ``materialize.query_table`` sends, as the server's source
(CAVEconnectome/MaterializationEngine, ``materializationengine/blueprints/client/``) answers it:

- Table metadata (``api2.py`` ``DatasetTableMetadata``): voxel resolution and
  ``reference_table``. A table with a reference table (``aibs_metamodel_celltypes_v661`` on
  ``nucleus_detection_v0``, as the MICrONS tutorial's metadata shows) makes caveclient
  (``_resolve_merge_reference``) post a join to the version's ``/query`` endpoint with
  ``tables=[[table, "target_id"], [reference, "id"]]`` and ``suffix_map={table: "",
  reference: "_ref"}``.
- Simple queries (``common.py`` ``generate_simple_query_dataframe``) and joins
  (``common.py`` ``generate_complex_query_dataframe``, ``query_manager.py`` ``execute_query``):
  ``filter_in_dict`` / ``filter_equal_dict`` / id-range filters keyed by table, only
  ``valid`` rows, ``select_columns`` (a ``*_root_id`` brings its ``*_supervoxel_id``, a
  position comes split in ``_x/_y/_z``; a list on a join takes each name from the first table
  that has it, with a deprecation warning; ``select_column_map`` per table), a join's columns
  suffixed only where a name is in both tables, and its ``deleted``/``superceded_id`` dropped.
- The row limit: ``limit = min(data.get("limit", QUERY_LIMIT_SIZE), QUERY_LIMIT_SIZE)``
  (``config.py``: 200,000) and, exactly when the answer holds ``limit`` rows, a ``Warning``
  header ``201 - "Limited query to {limit} rows`` (``common.py``; also the tutorial's recorded
  outputs). ``limit_wording="live"`` sends the live query's words instead (``api2.py``
  ``assemble_live_query_dataframe``: "result has N entries, which is equal or more than limit
  of L there may be more results which are not shown", sent when ``len >= limit``), and
  ``None`` no header at all. Warnings go out as one header each (``utils.py``
  ``add_warnings_to_headers``), which requests joins with ", ".
- Positions converted to ``desired_resolution`` on the server (``dataframe_resolution``
  header) or, like older servers, left to the client (``convert_on_server=False``).
- Rate limits: ``materializationengine/limiter.py`` (flask-limiter, per user and endpoint)
  answers 429 with flask-restx's JSON ``{"message": "<limit>"}``; a ``Retry-After`` header
  comes only where the deployment enables flask-limiter's headers (``RATELIMIT_HEADERS_ENABLED``,
  off by default), so :func:`rate_limited` sends it only when given one. caveclient's session
  (``session_config._patch_session``: urllib3 ``Retry(total=3, raise_on_status=False)``,
  which honours ``Retry-After`` on a 429) retries such an answer 3 times itself before
  raising; ``responses`` replays those retries (without sleeping), so they use up failures.

Arrow IPC stream bodies with content type ``data.arrow`` (``utils.py`` ``create_query_response``).
A table is a DataFrame, or a callable ``rows(body) -> DataFrame`` that makes the rows a query's
filters ask for (a benchmark's table too large to hold).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlparse

import numpy as np
import pandas as pd
import pyarrow as pa
import requests
import responses
from caveclient.endpoints import materialization_endpoints_v3
from caveclient.tools.testing import (
    TEST_DATASTACK,
    TEST_GLOBAL_SERVER,
    TEST_IMAGE_SERVER,
    TEST_LOCAL_SERVER,
    CAVEclientMock,
)

DATASTACK = TEST_DATASTACK
LOCAL_SERVER = TEST_LOCAL_SERVER
GLOBAL_SERVER = TEST_GLOBAL_SERVER
VERSION = 7
ROOT_BASE = 864691135000000000
NUCLEUS_TABLE = "nucleus_detection_v0"
#: materializationengine/config.py QUERY_LIMIT_SIZE
QUERY_LIMIT_SIZE = 200_000
#: query_manager.py DEFAULT_SUFFIX_LIST: a join's suffix for a table the suffix_map leaves out.
DEFAULT_SUFFIX_LIST = ["x", "y", "z", "xx", "yy", "zz"]
_POSITION = re.compile(r"^(.*_position)_([xyz])$")


#: The fake datastack's Neuroglancer sources: caveclient's test image source (a precomputed
#: gs:// path, as info services store them) and a graphene segmentation.
IMAGE_SOURCE = f"precomputed://{TEST_IMAGE_SERVER}"
SEGMENTATION_SOURCE = f"graphene://{LOCAL_SERVER}/segmentation/table/test_v1"
VIEWER_SITE = "https://viewer.test.example/"


def datastack_info(viewer_resolution=(4.0, 4.0, 40.0)) -> dict[str, Any]:
    """The info service's datastack record (GET ``/info/api/v2/datastack/full/{datastack}``),
    the shape caveclient's ``caveclient/infoservice.py`` reads: ``InfoServiceClient.image_source``
    takes ``aligned_volume.image_source`` (through ``get_aligned_volume_info``),
    ``segmentation_source`` and ``viewer_site`` are top-level keys (``_get_property``), and
    ``viewer_resolution`` is ``viewer_resolution_x/_y/_z``; caveclient's own
    ``tools.testing.default_info`` has the same keys. MICrONS' viewer resolution is 4x4x40 nm."""
    x, y, z = viewer_resolution
    return {
        "viewer_site": VIEWER_SITE,
        "aligned_volume": {"name": "test_volume", "image_source": IMAGE_SOURCE, "id": 1,
                           "description": "a test volume"},
        "synapse_table": "synapses_pni_2",
        "description": "an offline MICrONS-like datastack",
        "local_server": LOCAL_SERVER,
        "segmentation_source": SEGMENTATION_SOURCE,
        "soma_table": NUCLEUS_TABLE,
        "analysis_database": None,
        "viewer_resolution_x": x,
        "viewer_resolution_y": y,
        "viewer_resolution_z": z,
    }


def make_client(
    version: int = VERSION, token: str | None = None, info: dict[str, Any] | None = None
) -> Any:
    """A CAVEclient pinned to ``version`` built by caveclient's own CAVEclientMock, whose info
    service answers ``info`` (default :func:`datastack_info`)."""
    client = CAVEclientMock(
        materialization=True,
        available_materialization_versions=[version - 1, version],
        set_version=version,
        info_file=info or datastack_info(),
    )
    if token is not None:
        client.auth.token = token
        client.materialize.session.headers["Authorization"] = f"Bearer {token}"
    return client


def serialize(frame: pd.DataFrame) -> bytes:
    """Arrow IPC stream bytes, as MaterializationEngine's create_query_response writes them."""
    batch = pa.RecordBatch.from_pandas(frame, preserve_index=False)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return sink.getvalue().to_pybytes()


def rate_limited(retry_after: str | None = None, limit: str = "100 per 1 minute") -> tuple:
    """A failure entry: the 429 flask-limiter answers through flask-restx's error handler."""
    headers = {"Content-Type": "application/json"}
    if retry_after is not None:
        headers["Retry-After"] = retry_after
    return 429, headers, json.dumps({"message": limit})


def cell_type_table(n_exc: int = 5, n_inh: int = 2, n_glia: int = 1) -> pd.DataFrame:
    """aibs_metamodel_celltypes_v661-like rows as a user sees them, one table with
    ``pt_root_id``; root ids ROOT_BASE+1.., plus a row with root id 0."""
    kinds = (
        [("excitatory_neuron", "23P")] * n_exc
        + [("inhibitory_neuron", "BC")] * n_inh
        + [("nonneuron", "astrocyte")] * n_glia
    )
    rows = [
        {"id": i + 1, "pt_root_id": ROOT_BASE + i + 1, "classification_system": c,
         "cell_type": t, "pt_position_x": 100 * i, "pt_position_y": 50, "pt_position_z": 20}
        for i, (c, t) in enumerate(kinds)
    ]
    rows.append({"id": len(rows) + 1, "pt_root_id": 0, "classification_system": "excitatory_neuron",
                 "cell_type": "23P", "pt_position_x": 1, "pt_position_y": 1, "pt_position_z": 1})
    return pd.DataFrame(rows)


def as_reference_table(flat: pd.DataFrame, nucleus_offset: int = 7000) -> dict[str, pd.DataFrame]:
    """Split a :func:`cell_type_table` as MICrONS stores it: a reference table (its own ``id``,
    ``target_id`` = the nucleus id, the classes) on ``nucleus_detection_v0`` (nucleus ``id``,
    ``pt_root_id``, ``pt_position``), the columns the tutorial's recorded answers show. Nucleus
    ids differ from the annotation ids, so a test sees which ``id`` came back."""
    nucleus_ids = flat["id"].to_numpy(dtype=np.int64) * 3 + nucleus_offset
    created = pd.Timestamp("2023-12-19 22:47:18", tz="UTC")
    reference = pd.DataFrame({
        "id": flat["id"].to_numpy(dtype=np.int64),
        "created": created,
        "valid": True,
        "target_id": nucleus_ids,
        **{c: flat[c].to_numpy() for c in ("classification_system", "cell_type")},
    })
    nucleus = pd.DataFrame({
        "id": nucleus_ids,
        "created": pd.Timestamp("2020-09-28 22:40:41", tz="UTC"),
        "superceded_id": pd.array([None] * len(flat), dtype="Int64"),
        "valid": True,
        "volume": np.linspace(80.0, 400.0, len(flat)),
        "pt_supervoxel_id": flat["pt_root_id"].to_numpy(dtype=np.int64) // 7,
        "pt_root_id": flat["pt_root_id"].to_numpy(dtype=np.int64),
        **{c: flat[c].to_numpy() for c in ("pt_position_x", "pt_position_y", "pt_position_z")},
    })
    return {"reference": reference, "nucleus": nucleus}


def synapse_table(pre_ids: list[int], per_neuron: list[int], seed: int = 0) -> pd.DataFrame:
    """synapses_pni_2-like rows (split positions) in 4x4x40 nm voxels."""
    rng = np.random.default_rng(seed)
    pre = np.repeat(np.asarray(pre_ids, dtype=np.int64), per_neuron)
    n = len(pre)
    ctr = rng.integers(1000, 9000, size=(n, 3)).astype(np.int64)
    frame = pd.DataFrame({
        "id": np.arange(n, dtype=np.int64) * 3 + 11,
        "valid": True,
        "pre_pt_supervoxel_id": np.arange(n, dtype=np.int64) + 10**16,
        "pre_pt_root_id": pre,
        "post_pt_supervoxel_id": np.arange(n, dtype=np.int64) + 2 * 10**16,
        "post_pt_root_id": ROOT_BASE + 10**6 + rng.integers(0, 50, size=n),
        "size": rng.integers(50, 5000, size=n),
    })
    for name, offset in (("pre_pt", -3), ("ctr_pt", 0), ("post_pt", 3)):
        for axis, column in enumerate("xyz"):
            frame[f"{name}_position_{column}"] = ctr[:, axis] + offset
    # The server keeps no particular order; shuffle so tests cannot rely on one.
    return frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)


class SelectError(ValueError):
    """A selected column the table lacks (query_manager.py select_column raises ValueError)."""


def _base(column: str) -> str:
    match = _POSITION.match(column)
    return match.group(1) if match else column


def _select(frame: pd.DataFrame, wanted: list[str]) -> list[str]:
    """The frame's columns for ``wanted`` names, as query_manager.py select_column picks them."""
    out: list[str] = []
    for name in wanted:
        if name.endswith("root_id"):
            supervoxel = name[: -len("root_id")] + "supervoxel_id"
            if supervoxel in frame.columns and supervoxel not in out:
                out.append(supervoxel)
        split = [f"{name}_{axis}" for axis in "xyz"]
        if all(c in frame.columns for c in split):
            found = split
        elif name in frame.columns:
            found = [name]
        else:
            raise SelectError(f"{name} not in model or models")
        out.extend(c for c in found if c not in out)
    return out


@dataclass
class FakeMaterializationServer:
    """Holds tables (in their native voxel resolution) and answers caveclient's requests."""

    tables: dict[str, pd.DataFrame | Callable[[dict], pd.DataFrame]]
    row_limit: int = QUERY_LIMIT_SIZE
    resolutions: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    convert_on_server: bool = True
    #: table -> the table it references (its ``target_id`` is that table's ``id``).
    references: dict[str, str] = field(default_factory=dict)
    #: "materialized" (the frozen query endpoints' words), "live", or None (no header).
    limit_wording: str | None = "materialized"
    #: Failures to serve before answering, in order: an exception instance, an HTTP status, or
    #: a (status, headers, body) triple such as :func:`rate_limited` makes.
    failures: list[Any] = field(default_factory=list)
    #: Text echoed in every answer's body/headers (to test that a token never leaks).
    echo: str = ""
    requests: list[dict[str, Any]] = field(default_factory=list)

    def register(self, rsps: responses.RequestsMock) -> None:
        mapping = {"me_server_address": LOCAL_SERVER, "datastack_name": DATASTACK,
                   "version": "VERSION", "table_name": "TABLE"}
        for endpoint, method, callback in (
            ("simple_query", responses.POST, self._simple_query),
            ("join_query", responses.POST, self._join_query),
            ("metadata", responses.GET, self._metadata),
        ):
            url = materialization_endpoints_v3[endpoint].format_map(mapping)
            pattern = re.escape(url).replace("VERSION", r"(\d+)").replace("TABLE", r"([^/?]+)")
            rsps.add_callback(method, re.compile(pattern + r"(\?.*)?$"), callback=callback)

    def _version_of(self, url: str) -> int:
        match = re.search(r"/version/(\d+)/", url)
        assert match, url
        return int(match.group(1))

    def _table_of(self, url: str) -> str:
        match = re.search(r"/version/\d+/table/([^/?]+)/", url)
        assert match, url
        return match.group(1)

    def _metadata(self, request: requests.PreparedRequest):
        table = self._table_of(request.url)
        if table not in self.tables:
            return 404, {}, json.dumps({"message": f"table {table} not found"})
        x, y, z = self.resolutions.get(table, (4.0, 4.0, 40.0))
        body = {"table_name": table, "reference_table": self.references.get(table),
                "schema": "x", "notice_text": None,
                "voxel_resolution_x": x, "voxel_resolution_y": y, "voxel_resolution_z": z}
        return 200, {}, json.dumps(body)

    def _record(self, request: requests.PreparedRequest, table: str, body: dict) -> None:
        self.requests.append({
            "url": request.url, "table": table, "version": self._version_of(request.url),
            "body": body, "params": parse_qs(urlparse(request.url).query),
        })

    def _failure(self):
        failure = self.failures.pop(0)
        if isinstance(failure, BaseException):
            raise failure
        if isinstance(failure, tuple):
            return failure
        return failure, {"content-type": "application/json"}, json.dumps(
            {"message": f"server unavailable {self.echo}"})

    def _rows(self, table: str, body: dict) -> pd.DataFrame:
        """The valid rows of ``table`` that the body's filters for it keep, native resolution."""
        source = self.tables[table]
        frame = source(body) if callable(source) else source
        for column, values in body.get("filter_in_dict", {}).get(table, {}).items():
            frame = frame[frame[column].isin(values)]
        for column, value in body.get("filter_equal_dict", {}).get(table, {}).items():
            frame = frame[frame[column] == value]
        for column, value in body.get("filter_greater_equal_dict", {}).get(table, {}).items():
            frame = frame[frame[column] >= value]
        for column, value in body.get("filter_less_dict", {}).get(table, {}).items():
            frame = frame[frame[column] < value]
        if "valid" in frame.columns:
            frame = frame[frame["valid"]]
        frame = frame.copy()
        desired = body.get("desired_resolution")
        if desired is not None and self.convert_on_server:
            native = np.asarray(self.resolutions.get(table, (4.0, 4.0, 40.0)))
            scale = native / np.asarray(desired, dtype=float)
            # query_manager.py execute_query converts only when a ratio differs from 1.
            for column in frame.columns if np.any(scale != 1) else []:
                if _POSITION.match(column):
                    frame[column] = frame[column] * scale["xyz".index(column[-1])]
        return frame

    def _limit(self, body: dict) -> int:
        return min(body.get("limit", self.row_limit), self.row_limit)

    def _limit_warning(self, rows: int, limit: int) -> list[str]:
        if self.limit_wording == "materialized" and rows == limit:
            return [f'201 - "Limited query to {limit} rows']
        if self.limit_wording == "live" and rows >= limit:
            return [f"result has {rows} entries, which is equal or more         than limit "
                    f"of {limit} there may be more results which are not shown"]
        return []

    def _notice(self, table: str) -> list[str]:
        return [f"Table Owner Notice on {table}: {self.echo}"] if self.echo else []

    def _answer(self, frame: pd.DataFrame, body: dict, warnings: list[str]):
        headers: dict[str, str] = {"Content-Type": "data.arrow"}
        if warnings:
            headers["Warning"] = ", ".join(w.replace("\n", " ") for w in warnings)
        desired = body.get("desired_resolution")
        if desired is not None and self.convert_on_server:
            headers["dataframe_resolution"] = ", ".join(str(v) for v in desired)
        return 200, headers, serialize(frame.reset_index(drop=True))

    def _simple_query(self, request: requests.PreparedRequest):
        table = self._table_of(request.url)
        body = json.loads(request.body)
        self._record(request, table, body)
        if self.failures:
            return self._failure()
        if table not in self.tables:
            return 404, {}, json.dumps({"message": f"table {table} not found"})
        limit = self._limit(body)
        frame = self._rows(table, body)
        if body.get("select_columns"):
            try:
                frame = frame[_select(frame, body["select_columns"])]
            except SelectError:
                # Uncaught in generate_simple_query_dataframe: flask-restx answers 500.
                return 500, {"content-type": "application/json"}, json.dumps(
                    {"message": "Internal Server Error"})
        frame = frame.drop(columns=["deleted", "superceded"], errors="ignore").head(limit)
        warnings = self._limit_warning(len(frame), limit) + self._notice(table)
        return self._answer(frame, body, warnings)

    def _join_query(self, request: requests.PreparedRequest):
        body = json.loads(request.body)
        (left, left_on), (right, right_on) = body["tables"]
        self._record(request, left, body)
        if self.failures:
            return self._failure()
        for table in (left, right):
            if table not in self.tables:
                return 404, {}, json.dumps({"message": f"table {table} not found"})
        warnings = self._notice(left) + self._notice(right)
        limit = self._limit(body)
        frames = {left: self._rows(left, body), right: self._rows(right, body)}
        selected: dict[str, list[str]] = {}
        if body.get("select_columns"):
            warnings.append("Select_columns is deprecated for join queries, please use "
                            "select_column_map ...")
            for name in body["select_columns"]:
                for table in (left, right):  # the server's order is a set's: arbitrary
                    try:
                        picked = _select(frames[table], [name])
                    except SelectError:
                        continue
                    selected.setdefault(table, []).extend(picked)
                    break
                else:
                    return 400, {}, json.dumps(
                        {"message": f"column {name} not found in any table referenced"})
        elif body.get("select_column_map"):
            for table, names in body["select_column_map"].items():
                try:
                    selected[table] = _select(frames[table], names)
                except SelectError as error:
                    return 400, {}, json.dumps({"message": f"{error} not found in {table}"})
        else:
            selected = {t: list(frames[t].columns) for t in (left, right)}
        suffixes = body.get("suffix_map") or {}
        bases = [{_base(c) for c in selected.get(t, [])} for t in (left, right)]
        duplicated = bases[0] & bases[1]
        parts = []
        for number, (table, key) in enumerate(((left, left_on), (right, right_on))):
            suffix = suffixes.get(table)
            suffix = DEFAULT_SUFFIX_LIST[number] if suffix is None else suffix
            names = {c: f"{_base(c)}{suffix}{c[len(_base(c)):]}"
                     for c in selected.get(table, []) if _base(c) in duplicated}
            part = frames[table][selected.get(table, [])].rename(columns=names)
            parts.append(part.assign(__key=frames[table][key].to_numpy()))
        joined = parts[0].merge(parts[1], on="__key", how="inner")
        names = [c for part in parts for c in part.columns if c != "__key"]
        columns = [c for c in names if not re.match(r"^(deleted|superceded_id)", c)]
        frame = joined[columns].head(limit)
        warnings += self._limit_warning(len(frame), limit)
        return self._answer(frame, body, warnings)
