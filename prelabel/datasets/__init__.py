"""Dataset folders (images, masks, labels.yaml) and the real datasets built offline."""

from prelabel.datasets.catalog import DATASET_BUILDERS, prepare_dataset
from prelabel.datasets.colin27 import AAL_GROUP_SCHEMA, build_colin27_aal
from prelabel.datasets.folder import (
    DatasetItem,
    is_complete,
    list_items,
    read_schema,
    write_dataset,
)
from prelabel.datasets.mni import MNI_TISSUE_SCHEMA, build_mni_tissue

__all__ = [
    "AAL_GROUP_SCHEMA",
    "DATASET_BUILDERS",
    "MNI_TISSUE_SCHEMA",
    "DatasetItem",
    "build_colin27_aal",
    "build_mni_tissue",
    "is_complete",
    "list_items",
    "prepare_dataset",
    "read_schema",
    "write_dataset",
]
