"""An offline MaterializationEngine for CAVEclient: real caveclient code talks to it via `responses`.

It answers table metadata and table queries the way the server does: arrow IPC stream bodies
with content type ``data.arrow``, ``filter_in_dict`` / id-range filters, a row limit that cuts the
answer and says so in a ``Warning`` header (MaterializationEngine's own wording), and position
conversion to ``desired_resolution`` either on the server (``dataframe_resolution`` header) or,
like older servers, left to the client.
"""

from __future__ import annotations

import json
import re
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
    TEST_LOCAL_SERVER,
    CAVEclientMock,
)

DATASTACK = TEST_DATASTACK
LOCAL_SERVER = TEST_LOCAL_SERVER
GLOBAL_SERVER = TEST_GLOBAL_SERVER
VERSION = 7
ROOT_BASE = 864691135000000000


def make_client(version: int = VERSION, token: str | None = None) -> Any:
    """A CAVEclient pinned to ``version`` built by caveclient's own CAVEclientMock."""
    client = CAVEclientMock(
        materialization=True,
        available_materialization_versions=[version - 1, version],
        set_version=version,
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


def cell_type_table(n_exc: int = 5, n_inh: int = 2, n_glia: int = 1) -> pd.DataFrame:
    """aibs_metamodel_celltypes_v661-like rows; root ids ROOT_BASE+1.., plus a row with id 0."""
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


@dataclass
class FakeMaterializationServer:
    """Holds tables (in their native voxel resolution) and answers caveclient's requests."""

    tables: dict[str, pd.DataFrame]
    row_limit: int = 10_000
    resolutions: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    convert_on_server: bool = True
    #: Failures to serve before answering, in order: an exception instance or an HTTP status.
    failures: list[Any] = field(default_factory=list)
    #: Text echoed in every answer's body/headers (to test that a token never leaks).
    echo: str = ""
    requests: list[dict[str, Any]] = field(default_factory=list)

    def register(self, rsps: responses.RequestsMock) -> None:
        base = materialization_endpoints_v3["simple_query"].format_map(
            {"me_server_address": LOCAL_SERVER, "datastack_name": DATASTACK,
             "version": "VERSION", "table_name": "TABLE"}
        )
        pattern = re.escape(base).replace("VERSION", r"(\d+)").replace("TABLE", r"([^/?]+)")
        rsps.add_callback(responses.POST, re.compile(pattern + r"(\?.*)?$"),
                          callback=self._query)
        meta = materialization_endpoints_v3["metadata"].format_map(
            {"me_server_address": LOCAL_SERVER, "datastack_name": DATASTACK,
             "version": "VERSION", "table_name": "TABLE"}
        )
        pattern = re.escape(meta).replace("VERSION", r"(\d+)").replace("TABLE", r"([^/?]+)")
        rsps.add_callback(responses.GET, re.compile(pattern + r"(\?.*)?$"),
                          callback=self._metadata)

    def _table_of(self, url: str) -> tuple[str, int]:
        match = re.search(r"/version/(\d+)/table/([^/?]+)/", url)
        assert match, url
        return match.group(2), int(match.group(1))

    def _metadata(self, request: requests.PreparedRequest):
        table, _ = self._table_of(request.url)
        if table not in self.tables:
            return 404, {}, json.dumps({"message": f"table {table} not found"})
        x, y, z = self.resolutions.get(table, (4.0, 4.0, 40.0))
        body = {"table_name": table, "reference_table": None, "schema": "x",
                "voxel_resolution_x": x, "voxel_resolution_y": y, "voxel_resolution_z": z}
        return 200, {}, json.dumps(body)

    def _query(self, request: requests.PreparedRequest):
        table, version = self._table_of(request.url)
        body = json.loads(request.body)
        self.requests.append({"url": request.url, "table": table, "version": version,
                              "body": body, "params": parse_qs(urlparse(request.url).query)})
        if self.failures:
            failure = self.failures.pop(0)
            if isinstance(failure, BaseException):
                raise failure
            return failure, {"content-type": "application/json"}, json.dumps(
                {"message": f"server unavailable {self.echo}"})
        if table not in self.tables:
            return 404, {}, json.dumps({"message": f"table {table} not found"})
        frame = self.tables[table]
        for column, values in body.get("filter_in_dict", {}).get(table, {}).items():
            frame = frame[frame[column].isin(values)]
        for column, value in body.get("filter_greater_equal_dict", {}).get(table, {}).items():
            frame = frame[frame[column] >= value]
        for column, value in body.get("filter_less_dict", {}).get(table, {}).items():
            frame = frame[frame[column] < value]
        limit = min(body.get("limit") or self.row_limit, self.row_limit)
        frame = frame.head(limit).copy()
        headers: dict[str, str] = {}
        warnings = []
        if self.echo:
            warnings.append(f"Table Owner Notice on {table}: {self.echo}")
        if len(frame) >= limit:
            warnings.append(f"result has {len(frame)} entries, which is equal or more than "
                            f"limit of {limit} there may be more results which are not shown")
        if warnings:
            headers["Warning"] = ", ".join(warnings)
        desired = body.get("desired_resolution")
        if desired is not None and self.convert_on_server:
            native = np.asarray(self.resolutions.get(table, (4.0, 4.0, 40.0)))
            scale = native / np.asarray(desired, dtype=float)
            for column in frame.columns:
                if "_position_" in column:
                    frame[column] = frame[column] * scale["xyz".index(column[-1])]
            headers["dataframe_resolution"] = ", ".join(str(v) for v in desired)
        return (200, {**headers, "Content-Type": "data.arrow"}, serialize(frame))
