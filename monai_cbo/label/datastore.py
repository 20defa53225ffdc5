"""The studies folder as MONAI Label's datastore, under :mod:`~monai_cbo.label.guard`'s rule."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from monailabel.datastore.local import LocalDatastore

from ..inferers.segment import check_label
from ..inferers.volume import load_volume
from .guard import Refused, check_finite, inside, plain_name

__all__ = ["MAX_VOLUME_BYTES", "StudiesDatastore"]

MAX_VOLUME_BYTES = 2 << 30  #: an uploaded image's data, decompressed (its header is read first)
MAX_HEADER_BYTES = 1 << 20  #: where an upload's voxel data may start (header and extensions)


def _nifti_voxels(path: str | Path, what: str) -> tuple[tuple[int, ...], int]:
    """The shape and the data's size in bytes of a NIfTI file, read from its header alone (nothing is
    decompressed beyond it), so an upload's size is checked before its data is read."""
    try:
        image = nib.load(str(path))
        shape = tuple(int(n) for n in image.header.get_data_shape())
        itemsize = np.dtype(image.header.get_data_dtype()).itemsize
        offset = int(getattr(image.dataobj, "offset", 0))  # where the file's voxel data starts
    except Exception as err:  # nibabel / gzip errors of a corrupt or truncated upload
        raise Refused(422, f"the {what} was not saved: it is not a readable NIfTI file ({type(err).__name__})") from err
    if offset > MAX_HEADER_BYTES:  # data placed far into a compressed stream: a bomb of another shape
        raise Refused(422, f"the {what} was not saved: its data starts {offset:,} bytes in (a NIfTI header is small)")
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    return shape, int(np.prod(shape, dtype=np.int64)) * itemsize


class StudiesDatastore(LocalDatastore):
    """MONAI Label's folder datastore under :mod:`~monai_cbo.label.guard`'s rule: every id and tag is a plain
    name, every path it builds lies inside the studies folder, an existing image is never overwritten (409,
    unless the server was started with ``--allow-image-overwrite``), a label is checked against its image (its
    header first, so a decompression bomb is refused before it is read) and saved only under
    ``labels/<tag>/``, and nothing is deleted."""

    def __init__(self, *args, allow_overwrite: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.allow_overwrite = allow_overwrite
        self.root = Path(self._datastore_path).resolve()
        self.images_root = Path(self._datastore.image_path()).resolve()
        self.labels_root = Path(self._datastore.label_path(None)).resolve()

    def image_path(self, image_id: str) -> str:
        """The path of image ``image_id`` of the datastore; :class:`Refused` 404 if there is none."""
        path = self.get_image_uri(plain_name(image_id, "the image id"))
        if not path:
            raise Refused(404, f"no image {image_id!r} in the studies folder; GET /datastore/?output=all lists them")
        return path

    def get_image_uri(self, image_id: str) -> str:
        if not isinstance(image_id, str) or not image_id:
            return ""
        path = super().get_image_uri(plain_name(image_id, "the image id"))
        return str(inside(path, self.root, f"image {image_id!r}")) if path else ""

    def get_label_uri(self, label_id: str, label_tag: str) -> str:
        plain_name(label_id, "the label id")
        plain_name(label_tag, "the label tag")
        path = super().get_label_uri(label_id, label_tag)
        return str(inside(path, self.labels_root, f"label {label_id!r}")) if path else ""

    def get_image_info(self, image_id: str) -> dict[str, Any]:
        return super().get_image_info(plain_name(image_id, "the image id"))

    def update_image_info(self, image_id: str, info: dict[str, Any]) -> None:
        check_finite(info, "info")
        return super().update_image_info(plain_name(image_id, "the image id"), info)

    def get_label_info(self, label_id: str, label_tag: str) -> dict[str, Any]:
        return super().get_label_info(plain_name(label_id, "the label id"), plain_name(label_tag, "the label tag"))

    def update_label_info(self, label_id: str, label_tag: str, info: dict[str, Any]) -> None:
        check_finite(info, "info")
        return super().update_label_info(
            plain_name(label_id, "the label id"), plain_name(label_tag, "the label tag"), info
        )

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]) -> str:
        image = self.image_path(image_id)
        label_tag = plain_name(label_tag, "the label tag")
        inside(self.labels_root / label_tag, self.labels_root, f"label tag {label_tag!r}")
        shape, _ = _nifti_voxels(label_filename, f"label uploaded for {image_id}")
        volume = load_volume(image)
        expected = [int(n) for n in volume.shape[1:4]]
        if len(shape) != 3 or sorted(shape) != sorted(expected):  # another orientation of the grid is reoriented
            raise Refused(
                422,
                f"the label uploaded for {image_id} was not saved: its header says shape {list(shape)}, the image "
                f"has {expected}; upload the label made on this image's grid",
            )
        try:
            check_label(load_volume(label_filename), volume)
        except Exception as err:  # any unreadable or mismatched upload is the client's problem, not the server's
            detail = str(err).replace(str(label_filename), "the upload")  # the server's own paths stay its own
            raise Refused(422, f"the label uploaded for {image_id} was not saved: {detail}") from err
        return super().save_label(image_id, label_filename, label_tag, label_info)

    def add_image(self, image_id: str, image_filename: str, image_info: dict[str, Any]) -> str:
        image_id = plain_name(image_id, "the image id")
        suffix = next((s for s in (".nii.gz", ".nii") if str(image_filename).endswith(s)), None)
        if suffix is None:
            raise Refused(415, f"the uploaded image {image_id!r} is not a NIfTI file (.nii.gz, .nii)")
        dest = inside(self.images_root / f"{image_id}{suffix}", self.images_root, f"image {image_id!r}")
        if not self.allow_overwrite and (super().get_image_uri(image_id) or dest.exists()):
            raise Refused(
                409,
                f"image {image_id!r} is already in the studies folder and images are never overwritten; upload it "
                "under another name (or start the server with --allow-image-overwrite)",
            )
        shape, size = _nifti_voxels(image_filename, f"uploaded image {image_id!r}")
        if size > MAX_VOLUME_BYTES:
            raise Refused(
                413,
                f"the uploaded image {image_id!r} holds {size:,} bytes of voxels (shape {list(shape)}); this server "
                f"takes at most {MAX_VOLUME_BYTES:,}",
            )
        try:
            load_volume(image_filename)
        except Exception as err:
            detail = str(err).replace(str(image_filename), "the upload")
            raise Refused(422, f"the uploaded image {image_id!r} was not saved: it cannot be read: {detail}") from err
        return super().add_image(image_id, image_filename, image_info)

    def remove_image(self, image_id: str) -> None:
        raise Refused(403, "monai-cbo label never deletes from the studies folder; remove the file yourself")

    def remove_label(self, label_id: str, label_tag: str) -> None:
        raise Refused(403, "monai-cbo label never deletes labels; save a corrected label over it instead")
