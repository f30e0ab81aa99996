"""The CAM file format: one `.npz` per shard, written streaming, read lazily (ALGORITHM §5).

For each image `<id>` the archive holds `<id>/keys` (present class ids, 0-based, int16),
`<id>/strided` (K × ⌈H/4⌉ × ⌈W/4⌉) and `<id>/high_res` (K × H × W), plus `image_ids` and
`format` ([FORMAT, storage]). Maps are max-normalised to [0, 1) and stored as float16 or,
~2× smaller again, as uint8 (round(255·v)); readers always get float32. The writer streams
one image at a time into the zip and the reader loads one image at a time, so no stage
holds more than one image of a shard in memory (the reference keeps all CAMs in RAM).
"""

from __future__ import annotations

import math
import os
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qaclims.atomic import atomic_path
from qaclims.errors import InputError

FORMAT = "qaclims-cams-1"
STORAGES = ("float16", "uint8")


@dataclass(frozen=True)
class CamRecord:
    """CAMs of one image: present class ids and their strided and high-res maps."""

    keys: np.ndarray
    strided: np.ndarray
    high_res: np.ndarray


def strided_size(height: int, width: int, stride: int = 4) -> tuple[int, int]:
    return math.ceil(height / stride), math.ceil(width / stride)


def _shape_problem(record: CamRecord) -> str | None:
    """Why `record` is not a valid CAM record, or None."""
    keys, strided, high_res = record.keys, record.strided, record.high_res
    if keys.ndim != 1 or not np.issubdtype(keys.dtype, np.integer):
        return f"keys must be a 1-D integer array, got {keys.dtype} {keys.shape}"
    if strided.ndim != 3 or high_res.ndim != 3:
        return f"maps must be K×h×w, got strided {strided.shape} and high_res {high_res.shape}"
    if not strided.shape[0] == high_res.shape[0] == len(keys):
        return (
            f"{len(keys)} keys but strided has {strided.shape[0]} and high_res "
            f"{high_res.shape[0]} maps"
        )
    expected = strided_size(*high_res.shape[1:])
    if strided.shape[1:] != expected:
        return f"strided maps are {strided.shape[1:]}, expected {expected} for {high_res.shape[1:]}"
    return None


def _encode(maps: np.ndarray, storage: str) -> np.ndarray:
    if storage == "float16":
        return maps.astype(np.float16)
    return np.round(np.clip(maps, 0.0, 1.0) * 255.0).astype(np.uint8)


def _decode(maps: np.ndarray) -> np.ndarray:
    if maps.dtype == np.uint8:
        return maps.astype(np.float32) / 255.0
    return maps.astype(np.float32)


def _write_array(zf: zipfile.ZipFile, name: str, array: np.ndarray) -> None:
    with zf.open(f"{name}.npy", "w", force_zip64=True) as fh:
        np.lib.format.write_array(fh, np.ascontiguousarray(array), allow_pickle=False)


def write_cams(
    path: str | os.PathLike, records: Iterable[tuple[str, CamRecord]], *, storage: str
) -> int:
    """Write (image_id, record) pairs one by one into a new shard file; return the count."""
    if storage not in STORAGES:
        raise ValueError(f"CAM storage '{storage}' is not one of {STORAGES}")
    ids: list[str] = []
    with (
        atomic_path(path, suffix=".npz") as tmp,
        zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf,
    ):
        for image_id, record in records:
            problem = _shape_problem(record)
            if problem:
                raise ValueError(f"image {image_id}: {problem}")
            if image_id in ids:
                raise ValueError(f"image {image_id} written twice")
            ids.append(image_id)
            _write_array(zf, f"{image_id}/keys", record.keys.astype(np.int16))
            _write_array(zf, f"{image_id}/strided", _encode(record.strided, storage))
            _write_array(zf, f"{image_id}/high_res", _encode(record.high_res, storage))
        _write_array(zf, "image_ids", np.array(ids, dtype=np.str_))
        _write_array(zf, "format", np.array([FORMAT, storage], dtype=np.str_))
    return len(ids)


class CamReader:
    """Lazy, validating access to one shard file: `reader[image_id]` or iteration."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        try:
            self._npz = np.load(self.path, allow_pickle=False)
        except FileNotFoundError as err:
            raise InputError(f"{self.path}: CAM file not found") from err
        except (OSError, ValueError, zipfile.BadZipFile) as err:
            raise InputError(f"{self.path}: not a CAM file ({err})") from err
        if not isinstance(self._npz, np.lib.npyio.NpzFile):
            raise InputError(f"{self.path}: not a CAM file (a single array, not an archive)")
        try:
            fmt = [str(v) for v in self._npz["format"]]
            self.image_ids: list[str] = [str(v) for v in self._npz["image_ids"]]
        except (KeyError, ValueError) as err:
            self.close()
            raise InputError(f"{self.path}: not a CAM file ({err})") from err
        if len(fmt) != 2 or fmt[0] != FORMAT or fmt[1] not in STORAGES:
            self.close()
            raise InputError(f"{self.path}: unknown CAM format {fmt}, expected {FORMAT}")
        self.storage = fmt[1]
        self._ids = set(self.image_ids)

    def __len__(self) -> int:
        return len(self.image_ids)

    def __contains__(self, image_id: object) -> bool:
        return image_id in self._ids

    def __getitem__(self, image_id: str) -> CamRecord:
        if image_id not in self._ids:
            raise InputError(f"{self.path}: image {image_id} is not in this CAM file")
        arrays = {}
        for name in ("keys", "strided", "high_res"):
            try:
                arrays[name] = self._npz[f"{image_id}/{name}"]
            except KeyError as err:
                raise InputError(f"{self.path}: image {image_id}: array '{name}' missing") from err
            except ValueError as err:
                raise InputError(f"{self.path}: image {image_id}: bad '{name}' ({err})") from err
        record = CamRecord(
            keys=arrays["keys"].astype(np.int64),
            strided=_decode(arrays["strided"]),
            high_res=_decode(arrays["high_res"]),
        )
        problem = _shape_problem(record)
        if problem:
            raise InputError(f"{self.path}: image {image_id}: {problem}")
        return record

    def __iter__(self) -> Iterator[tuple[str, CamRecord]]:
        for image_id in self.image_ids:
            yield image_id, self[image_id]

    def close(self) -> None:
        self._npz.close()

    def __enter__(self) -> CamReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_cams(path: str | os.PathLike) -> CamReader:
    """Open a shard file; use as `with read_cams(p) as cams: for image_id, rec in cams: ...`."""
    return CamReader(path)
